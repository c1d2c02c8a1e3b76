"""Protocol v1: the messages on the WebSocket, as typed values, and their encoding.

Rules:

* Every WebSocket message is one UTF-8 JSON object with a string ``type``.
* ``decode_client(data)`` returns one of the client message classes or raises
  :class:`ProtocolError` with a ``code`` from :data:`ERROR_CODES`; for *any* input it
  raises nothing else (tests fuzz this).
* State messages (``snapshot``, ``delta``) are encoded once per ``(topic, base,
  seq)`` by the hub and reused byte for byte; several of them travel in one
  ``batch`` message whose bytes are the fragments joined, never re-encoded.
* Unknown *fields* in a client message are ignored (forward compatibility); unknown
  *types* get an ``error`` with code ``unknown_type``; a missing or non-string
  ``type`` is a ``bad_message``.

``docs/protocol.md`` is the reference for people; keep it in step with this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias

import orjson

from .disconnect import DISCONNECTS
from .state import Delta, JsonValue, Snapshot, TopicState
from .topics import MAX_TOPIC_BYTES, TopicError, validate_filter, validate_topic

__all__ = [
    "CLOSE_CODES",
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "Ack",
    "AckAlarm",
    "ActionAck",
    "Auth",
    "ClientMessage",
    "DecodeLimits",
    "Error",
    "Ping",
    "Pong",
    "ProtocolError",
    "Report",
    "Resume",
    "ServerMessage",
    "Subscribe",
    "Unsubscribe",
    "Welcome",
    "decode_client",
    "decode_server",
    "encode_action",
    "encode_batch",
    "encode_state",
    "encode_topic",
]

PROTOCOL_VERSION: Final = 1
#: additions within v1 that old clients may ignore (docs/protocol.md, "Changes"):
#: 1 = snapshots with ``resync: true``, the ``rate_limited`` warning before 4029;
#: 2 = wall ``report``, ``action`` and ``action_ack``
PROTOCOL_MINOR: Final = 3
#: a ``report`` message is refused above this size (docs/protocol.md, "Wall reports")
MAX_REPORT_BYTES: Final = 2048

#: Error codes of ``error`` messages (and of :class:`ProtocolError`).
ERROR_CODES: Final[Mapping[str, str]] = {
    "bad_json": "the message is not a UTF-8 JSON object",
    "bad_message": "a field is missing or has the wrong type or value",
    "unknown_type": "the message type is not part of this protocol version",
    "bad_filter": "a topic filter or topic name breaks the topic rules",
    "unauthorized": "authentication is required first, or the token was refused",
    "forbidden": "the filter lies outside the topics this identity may read",
    "too_many_subscriptions": "the per-connection subscription limit is reached",
    "unknown_subscription": "no subscription has this id",
    "duplicate_subscription": "a subscription with this id exists already",
    "rate_limited": "too many messages per second from this connection",
    "ack_not_allowed": "this identity may not acknowledge alarms (no ack grant)",
    "unknown_alarm": "an alarm named does not exist or is not visible to this identity",
    "bad_rate": "rate_hz is not a finite number of at least the minimum rate",
    "too_many_filters": "the per-connection limit on filters (all subscriptions) is reached",
    "too_many_groups": "the per-connection limit on distinct (filter, rate) streams is reached",
    "too_soon": "a wall report came sooner than the minimum report interval",
    "too_many_walls": "the gateway's wall registry is full",
    "unknown_action": "no action with this id was sent to this wall",
    "unavailable": "the gateway could not decide in time (retry with the same id)",
}

#: WebSocket close codes the gateway uses (the table: gateway/core/disconnect.py).
CLOSE_CODES: Final[Mapping[int, str]] = {code: d.meaning for code, d in DISCONNECTS.items()}


class ProtocolError(Exception):
    """A client message the gateway refuses. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied while decoding client messages (they come from the config)."""

    max_filters: int = 64
    max_resume_topics: int = 10_000
    max_id_len: int = 64
    max_token_len: int = 8192
    max_topic_bytes: int = MAX_TOPIC_BYTES


DEFAULT_LIMITS: Final = DecodeLimits()

# -- helpers for decoders -------------------------------------------------------------


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message)


def _str(obj: Mapping[str, Any], key: str, max_len: int, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise _bad(f"'{key}' must be a string of 1 to {max_len} characters")
    return value


# -- client messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    type: ClassVar[str] = "auth"
    token: str = field(repr=False)  # never in logs or reprs

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> Auth:
        token = _str(obj, "token", limits.max_token_len)
        assert token is not None
        return cls(token)


@dataclass(frozen=True, slots=True)
class Subscribe:
    type: ClassVar[str] = "subscribe"
    id: str
    filters: tuple[str, ...]
    rate_hz: float | None = None  # None: the server's default rate
    history_s: float | None = None  # chart history to send before live state

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> Subscribe:
        sub_id = _str(obj, "id", limits.max_id_len)
        assert sub_id is not None
        filters = obj.get("filters")
        if type(filters) is not list or not 0 < len(filters) <= limits.max_filters:
            raise ProtocolError(
                "bad_message",
                f"'filters' must be a list of 1 to {limits.max_filters} filters",
                sub_id,
            )
        try:
            checked = tuple(validate_filter(f, limits.max_topic_bytes) for f in filters)
        except TopicError as err:
            raise ProtocolError("bad_filter", str(err), sub_id) from None
        rate = obj.get("rate_hz")
        if rate is not None and type(rate) not in (int, float):
            raise ProtocolError("bad_message", "'rate_hz' must be a number", sub_id)
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            # the range and the steps are the hub's (rates.py): "bad_rate" there too
            raise ProtocolError("bad_rate", "'rate_hz' must be a finite number > 0", sub_id)
        hist = obj.get("history_s")
        if hist is not None and (
            type(hist) not in (int, float) or not math.isfinite(hist) or not 0 <= hist <= 86400
        ):
            raise ProtocolError("bad_message", "'history_s' must be a number 0..86400", sub_id)
        return cls(
            sub_id,
            tuple(dict.fromkeys(checked)),
            None if rate is None else float(rate),
            None if not hist else float(hist),
        )


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    type: ClassVar[str] = "unsubscribe"
    id: str

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> Unsubscribe:
        sub_id = _str(obj, "id", limits.max_id_len)
        assert sub_id is not None
        return cls(sub_id)


@dataclass(frozen=True, slots=True)
class Resume:
    """The client's positions: for each topic it holds, the ``seq`` it holds."""

    type: ClassVar[str] = "resume"
    epoch: str
    topics: Mapping[str, int]

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> Resume:
        epoch = _str(obj, "epoch", 64)
        assert epoch is not None
        topics = obj.get("topics")
        if type(topics) is not dict or len(topics) > limits.max_resume_topics:
            raise _bad(f"'topics' must be an object of at most {limits.max_resume_topics} topics")
        if _plain_topics(topics, limits.max_topic_bytes):  # all at once: a resume storm
            if not all(type(seq) is int and seq >= 0 for seq in topics.values()):
                raise _bad("each topic's seq must be an integer >= 0")
            return cls(epoch, topics)
        for topic, seq in topics.items():  # one by one: the first error, as it comes
            try:
                validate_topic(topic, limits.max_topic_bytes)
            except TopicError as err:
                raise ProtocolError("bad_filter", str(err)) from None
            if type(seq) is not int or seq < 0:
                raise _bad("each topic's seq must be an integer >= 0")
        return cls(epoch, topics)


def _plain_topics(topics: dict[str, Any], max_bytes: int) -> bool:
    """True if every key is a valid topic name, checked at once for them all (False:
    maybe not; :func:`validate_topic` says which rule one of them breaks)."""
    if "" in topics:
        return False
    joined = "/".join(topics)  # '/' adds none of the characters looked for
    if "+" in joined or "#" in joined or "\x00" in joined:
        return False
    try:
        joined.encode("utf-8")  # a lone surrogate
    except UnicodeEncodeError:
        return False
    return max(map(len, topics), default=0) * 4 <= max_bytes  # 4 bytes a character at most


@dataclass(frozen=True, slots=True)
class Ping:
    type: ClassVar[str] = "ping"
    id: str | int | None = None

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> Ping:
        ping_id = obj.get("id")
        if ping_id is not None and type(ping_id) not in (str, int):
            raise _bad("'id' must be a string or an integer")
        if type(ping_id) is str and len(ping_id) > limits.max_id_len:
            raise _bad(f"'id' must be at most {limits.max_id_len} characters")
        if type(ping_id) is int and not -(2**53) < ping_id < 2**53:  # JavaScript's safe
            raise _bad("'id' must be a safe integer")
        return cls(ping_id)


@dataclass(frozen=True, slots=True)
class AckAlarm:
    """Acknowledge alarms (``$alarms/<rule>/<topic>``); ``id`` is the client's request
    id: a retry with the same id gets the same answer (docs/alarms.md)."""

    type: ClassVar[str] = "ack_alarm"
    id: str
    alarms: tuple[str, ...]

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> AckAlarm:
        req_id = _str(obj, "id", limits.max_id_len)
        assert req_id is not None
        alarms = obj.get("alarms")
        if type(alarms) is not list or not 0 < len(alarms) <= 1000:
            raise ProtocolError("bad_message", "'alarms' must be a list of 1 to 1000", req_id)
        try:
            names = tuple(validate_topic(a, limits.max_topic_bytes) for a in alarms)
        except TopicError as err:
            raise ProtocolError("bad_filter", str(err), req_id) from None
        return cls(req_id, names)


WALL_NAME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._:-"
)


def _text(obj: Mapping[str, Any], key: str, max_len: int) -> str | None:
    """An optional string without control characters (it reaches pages and logs)."""
    value = _str(obj, key, max_len, required=False)
    if value is not None and not value.isprintable():
        raise _bad(f"'{key}' must not contain control characters")
    return value


def _num(obj: Mapping[str, Any], key: str, hi: float, *, integer: bool = False) -> Any:
    """An optional number 0..hi (an integer if asked)."""
    value = obj.get(key)
    if value is None:
        return None
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if type(value) not in kinds or not (math.isfinite(value) and 0 <= value <= hi):
        what = "an integer" if integer else "a number"
        raise _bad(f"'{key}' must be {what} from 0 to {hi:g}")
    return value if integer else float(value)


@dataclass(frozen=True, slots=True)
class Report:
    """A wall's health (docs/protocol.md, "Wall reports"); every field but ``wall``
    optional."""

    type: ClassVar[str] = "report"
    wall: str
    page: str | None = None
    transport: str | None = None  # "ws" or "sse"
    epoch: str | None = None  # the last applied state message's epoch, topic, seq, rx
    topic: str | None = None
    seq: int | None = None
    rx: float | None = None
    data_age_s: float | None = None
    fps: float | None = None
    slowest_frame_ms: float | None = None
    heap_bytes: int | None = None
    visible: bool = True
    reconnects: int | None = None
    trouble: str | None = None  # what the wall detected itself, in words
    reloaded_by: str | None = None  # the action id that reloaded this page

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> Report:
        wall = _str(obj, "wall", 64)
        assert wall is not None
        if not set(wall) <= WALL_NAME_CHARS:
            raise _bad("'wall' may hold letters, digits, space and . _ : - only")
        transport = obj.get("transport")
        if transport not in (None, "ws", "sse"):
            raise _bad("'transport' must be 'ws' or 'sse'")
        topic = obj.get("topic")
        if topic is not None:
            try:
                validate_topic(topic, limits.max_topic_bytes)
            except TopicError as err:
                raise ProtocolError("bad_filter", str(err)) from None
        visible = obj.get("visible", True)
        if type(visible) is not bool:
            raise _bad("'visible' must be true or false")
        return cls(
            wall,
            _text(obj, "page", 128),
            transport,
            _text(obj, "epoch", 64),
            topic,
            _num(obj, "seq", 2**53, integer=True),
            _num(obj, "rx", 1e11),
            _num(obj, "data_age_s", 1e9),
            _num(obj, "fps", 1000),
            _num(obj, "slowest_frame_ms", 1e9),
            _num(obj, "heap_bytes", 2**53, integer=True),
            visible,
            _num(obj, "reconnects", 2**31, integer=True),
            _text(obj, "trouble", 200),
            _text(obj, "reloaded_by", limits.max_id_len),
        )

    def fields(self) -> dict[str, Any]:
        """The report's fields, for /api/walls."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "wall"}


@dataclass(frozen=True, slots=True)
class ActionAck:
    """A wall's answer to an ``action``: done (``ok``) or not, and why."""

    type: ClassVar[str] = "action_ack"
    id: str
    ok: bool
    detail: str | None = None

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any], limits: DecodeLimits) -> ActionAck:
        action_id = _str(obj, "id", limits.max_id_len)
        assert action_id is not None
        ok = obj.get("ok", True)
        if type(ok) is not bool:
            raise _bad("'ok' must be true or false")
        return cls(action_id, ok, _text(obj, "detail", 200))


ClientMessage: TypeAlias = (
    Auth | Subscribe | Unsubscribe | Resume | Ping | AckAlarm | Report | ActionAck
)

_CLIENT_TYPES: Final[Mapping[str, Callable[[Mapping[str, Any], DecodeLimits], ClientMessage]]] = {
    cls.type: cls.from_obj
    for cls in (Auth, Subscribe, Unsubscribe, Resume, Ping, AckAlarm, Report, ActionAck)
}


def decode_client(data: bytes | str, limits: DecodeLimits = DEFAULT_LIMITS) -> ClientMessage:
    """Decode one client message; raises :class:`ProtocolError` and nothing else."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"not valid UTF-8 JSON: {err.msg}") from None
    except Exception:  # defensive: an orjson change must not crash a connection
        raise ProtocolError("bad_json", "not valid UTF-8 JSON") from None
    if type(obj) is not dict:
        raise ProtocolError("bad_json", "a message must be a JSON object")
    kind = obj.get("type")
    if type(kind) is not str:
        raise _bad("'type' must be a string")
    decoder = _CLIENT_TYPES.get(kind)
    if decoder is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    if kind == "report" and len(data) > MAX_REPORT_BYTES // 4 and _size(data) > MAX_REPORT_BYTES:
        raise _bad(f"a report is limited to {MAX_REPORT_BYTES} bytes")
    return decoder(obj, limits)


def _size(data: bytes | str) -> int:
    return len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))


# -- server messages ---------------------------------------------------------------


def encode_action(action_id: str, action: str, params: Mapping[str, JsonValue]) -> bytes:
    """A remote action for a wall: ``reload``, ``page`` (``page``), ``banner``
    (``text``, ``ttl_s``); the wall answers with ``action_ack`` and the same id."""
    return orjson.dumps({"type": "action", "id": action_id, "action": action, **params})


@dataclass(frozen=True, slots=True)
class Welcome:
    type: ClassVar[str] = "welcome"
    epoch: str
    server_time: float
    heartbeat_s: float
    auth_required: bool
    limits: Mapping[str, JsonValue]
    protocol: int = PROTOCOL_VERSION
    meta: Mapping[str, JsonValue] | None = None  # {"url": "/api/meta", "version": ...}
    protocol_minor: int = PROTOCOL_MINOR
    #: informational: which worker process answered (``gateway run --workers N``)
    worker: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to subscribe (``id``, ``filters``, granted ``rate_hz``), unsubscribe,
    auth (``op="auth"``) and resume (``resumed``: same epoch or not)."""

    type: ClassVar[str] = "ack"
    op: str
    id: str | None = None
    filters: tuple[str, ...] | None = None
    rate_hz: float | None = None
    resumed: bool | None = None
    restricted: bool | None = None  # some matching topics are outside the grants
    alarms: tuple[str, ...] | None = None  # ack_alarm: the alarms acknowledged


@dataclass(frozen=True, slots=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    message: str
    ref: str | None = None  # the subscription id the error is about, if any


@dataclass(frozen=True, slots=True)
class Pong:
    type: ClassVar[str] = "pong"
    id: str | int | None
    server_time: float


ServerMessage: TypeAlias = Welcome | Ack | Error | Pong | Snapshot | Delta


def encode(msg: Welcome | Ack | Error | Pong) -> bytes:
    """Encode a control message; ``None`` fields are left out."""
    out: dict[str, Any] = {"type": msg.type}
    for name in msg.__slots__:
        value = getattr(msg, name)
        if value is not None:
            out[name] = value
    return orjson.dumps(out)


def encode_state(item: Snapshot | Delta) -> bytes:
    """Encode one snapshot or delta fragment (the hub caches these bytes)."""
    if type(item) is Delta:
        out: dict[str, Any] = {
            "type": "delta",
            "topic": item.topic,
            "base": item.base,
            "seq": item.seq,
            "set": item.set,
        }
        if item.unset:
            out["unset"] = item.unset
        out["ts"] = item.ts
        out["rx"] = item.rx
        if item.meta:
            out["online"] = item.online
            out["stale"] = item.stale
        return orjson.dumps(out)
    assert type(item) is Snapshot
    snap: dict[str, Any] = {
        "type": "snapshot",
        "topic": item.topic,
        "seq": item.seq,
        "fields": item.fields,
        "online": item.online,
        "stale": item.stale,
        "ts": item.ts,
        "rx": item.rx,
    }
    # applies whatever seq the client holds: asked for (a resync), or the only way back
    # for a client whose copy is ahead of the gateway (its own bug; a plain snapshot
    # at a lower seq than it holds would be ignored by rule 1 for good)
    if item.reason == "resync" or item.reason == "ahead":
        snap["resync"] = True
    return orjson.dumps(snap)


def encode_topic(st: TopicState, base: int | None) -> bytes | None:
    """The fragment :func:`encode_state` gives for ``store.diff(st.topic, base)``,
    byte for byte, written from the topic's state without the intermediate
    :class:`Snapshot`/:class:`Delta` (the hub's per-tick work: one per changed topic).

    Only the two common answers are written here: a snapshot (``base`` None) and a
    delta from a base inside the window (``floor <= base < seq``) that is not larger
    than a snapshot. Every other case returns None and the caller asks the store,
    which decides (and counts) why a snapshot goes instead (state.py)."""
    if base is None:
        return orjson.dumps(
            {
                "type": "snapshot",
                "topic": st.topic,
                "seq": st.seq,
                "fields": st.fields,
                "online": st.online,
                "stale": st.stale,
                "ts": st.device_ts,
                "rx": st.changed_at,
            }
        )
    if not st.floor <= base < st.seq:
        return None
    fields = st.fields
    out: dict[str, Any] = {
        "type": "delta",
        "topic": st.topic,
        "base": base,
        "seq": st.seq,
        "set": {k: fields[k] for k, v in st.versions.items() if v > base},
    }
    count = len(out["set"])
    if st.tombstones:
        unset = [k for k, v in st.tombstones.items() if v > base]
        if unset:
            count += len(unset)
            out["unset"] = unset
    if count > len(fields):
        return None  # a snapshot is smaller: the store says so (and counts it)
    out["ts"] = st.device_ts
    out["rx"] = st.changed_at
    if st.meta_seq > base:
        out["online"] = st.online
        out["stale"] = st.stale
    return orjson.dumps(out)


_BATCH_HEAD: Final = b'{"type":"batch","items":['
_BATCH_TAIL: Final = b"]}"


def encode_batch(fragments: Sequence[bytes]) -> bytes:
    """One message carrying several state fragments, without re-encoding them."""
    if len(fragments) == 1:
        return fragments[0]
    return _BATCH_HEAD + b",".join(fragments) + _BATCH_TAIL


def batch_overhead(count: int) -> int:
    """Bytes a batch adds around ``count`` fragments."""
    return 0 if count <= 1 else len(_BATCH_HEAD) + len(_BATCH_TAIL) + count - 1


def decode_server(data: bytes | str) -> list[ServerMessage]:
    """Decode a server message (a batch yields several). For clients and tests.

    Raises :class:`ProtocolError` for anything that is not a well-formed server
    message: a client that meets one should reconnect, not guess.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"not valid UTF-8 JSON: {err.msg}") from None
    if type(obj) is not dict:
        raise ProtocolError("bad_json", "a message must be a JSON object")
    if obj.get("type") == "batch":
        items = obj.get("items")
        if type(items) is not list:
            raise _bad("a batch needs a list of items")
        return [_server_obj(item) for item in items]
    return [_server_obj(obj)]


def _server_obj(obj: Any) -> ServerMessage:
    try:
        kind = obj["type"]
        if kind == "delta":
            return Delta(
                obj["topic"],
                int(obj["base"]),
                int(obj["seq"]),
                dict(obj["set"]),
                tuple(obj.get("unset", ())),
                obj.get("ts"),
                float(obj["rx"]),
                "online" in obj,
                obj.get("online"),
                bool(obj.get("stale", False)),
            )
        if kind == "snapshot":
            return Snapshot(
                obj["topic"],
                int(obj["seq"]),
                dict(obj["fields"]),
                obj.get("online"),
                bool(obj.get("stale", False)),
                obj.get("ts"),
                float(obj["rx"]),
                "resync" if obj.get("resync") is True else "",
            )
        if kind == "welcome":
            return Welcome(
                obj["epoch"],
                float(obj["server_time"]),
                float(obj["heartbeat_s"]),
                bool(obj["auth_required"]),
                dict(obj.get("limits", {})),
                int(obj["protocol"]),
                obj.get("meta"),
                int(obj.get("protocol_minor", 0)),
                obj.get("worker"),
            )
        if kind == "ack":
            filters = obj.get("filters")
            return Ack(
                obj["op"],
                obj.get("id"),
                None if filters is None else tuple(filters),
                obj.get("rate_hz"),
                obj.get("resumed"),
                obj.get("restricted"),
                None if obj.get("alarms") is None else tuple(obj["alarms"]),
            )
        if kind == "error":
            return Error(obj["code"], obj["message"], obj.get("ref"))
        if kind == "pong":
            return Pong(obj.get("id"), float(obj["server_time"]))
    except (KeyError, TypeError, ValueError) as err:
        raise _bad(f"malformed server message: {err!r}") from None
    raise ProtocolError("unknown_type", f"unknown server message type {obj.get('type')!r}")
