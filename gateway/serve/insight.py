"""Alarms, metadata and chart history at the edge of the network.

The ``ack_alarm`` message, the history a subscription asks for, and ``/api/alarms``,
``/api/meta``, ``/api/history``.

Rules:
* Acknowledging needs the identity's ack grant (``Identity.can_ack``); an alarm is
  acknowledgeable only if the identity may see its device topic. Every
  acknowledgement (and every refusal) is one audit line on the ``gateway.audit``
  logger: who, which alarms, the request id, when. Never the token.
* History for a subscription goes out after its ``ack`` and before its first
  state frame (the session holds its live frames meanwhile), one ``history``
  message per topic and event-loop checkpoint, then ``history_end``; at most
  :data:`HISTORY_BUDGET_BYTES` per subscription (``truncated`` says when more
  existed: fetch the rest from ``/api/history``).
* ``/api/history?filter=F`` answers a sample: at most ``limit`` (1 to
  :data:`HISTORY_SAMPLE_MAX`) of the matching topics, spread evenly over them in the
  history's topic order, with a checkpoint every :data:`HISTORY_SAMPLE_STEP` topics
  matched or encoded: one request per chart group instead of one per device, and no
  long hold of the loop whatever the fleet.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import orjson
import trio

from ..auth import Identity
from ..core.alarms import ALARM_PREFIX, AlarmEngine, device_of, with_alarm_grants
from ..core.history import History
from ..core.meta import Meta
from ..core.protocol import Ack, AckAlarm, Error, Subscribe
from ..core.state import StateStore
from ..core.topics import TopicError, matches, validate_filter, validate_topic
from .lifecycle import Lifecycle

__all__ = ["HISTORY_BUDGET_BYTES", "HISTORY_SAMPLE_MAX", "Insight"]

audit = logging.getLogger("gateway.audit")

HISTORY_BUDGET_BYTES: Final = 2 << 20
#: a subscription's history waits while more than this is queued for its peer
HISTORY_BACKLOG_BYTES: Final = 256 * 1024
HISTORY_CONCURRENCY: Final = 2  # histories built at once (Insight.history_slots)
HISTORY_SAMPLE_MAX: Final = 100  # topics in one /api/history?filter= answer
HISTORY_SAMPLE_DEFAULT: Final = 25
HISTORY_SAMPLE_STEP: Final = 500  # topics matched (x10 by prefix; 10 encoded) per checkpoint

#: how a reply goes out later: a text frame writer, and the stream's lifecycle (nothing
#: is written once it is ending)
Later: TypeAlias = tuple[Callable[[bytes], None], Lifecycle]


def _visible(grants: tuple[str, ...] | None) -> Callable[[str], bool]:
    if grants is None:
        return lambda topic: True
    return lambda topic: any(matches(g, topic) for g in grants)


@dataclass
class Insight:
    store: StateStore
    meta: Meta
    history: History
    alarms: AlarmEngine
    wall: Callable[[], float]
    #: set in a worker of `gateway run --workers N`: ack_alarm goes to the parent's
    #: alarm engine, and its answer is written later (gateway/cluster/worker.py)
    forward_ack: Callable[[Identity, AckAlarm, Later], None] | None = None
    #: subscriptions' histories being built at once, all connections together: each
    #: takes a topic's window (up to ~10 ms) per turn, and a hundred of them runnable
    #: at once made a scheduler batch of seconds (send_each)
    history_slots: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(HISTORY_CONCURRENCY)
    )

    @property
    def welcome(self) -> dict[str, Any]:
        return {"url": "/api/meta", "version": self.meta.version}

    # -- the ack_alarm message ---------------------------------------------------------

    def ack_alarm(
        self, identity: Identity, msg: AckAlarm, later: Later | None = None
    ) -> Ack | Error | None:
        """The answer; None if it was forwarded (a worker): then it is written with
        ``later`` (a text frame writer, and the stream's lifecycle) when the parent
        answers. A forwarded refusal is not counted as a protocol error."""
        if self.forward_ack is not None and later is not None:
            self.forward_ack(identity, msg, later)
            return None
        now = self.wall()
        if not identity.can_ack:
            audit.info(
                "alarm ack refused: %s may not acknowledge (request %r, %d alarms)",
                identity.name,
                msg.id,
                len(msg.alarms),
            )
            return Error(
                "ack_not_allowed",
                f"identity {identity.name!r} may not acknowledge alarms (no ack grant)",
                msg.id,
            )
        retries = self.alarms.stats.ack_retries
        out = self.alarms.ack(
            msg.alarms, identity.name, msg.id, now, may_see=_visible(identity.grants)
        )
        when = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        if self.alarms.stats.ack_retries > retries:
            audit.info(
                "alarm ack retry by %s at %s (request %r): the same answer, nothing changed",
                identity.name,
                when,
                msg.id,
            )
        elif not out.ok:
            audit.info(
                "alarm ack refused: %s at %s (request %r): %s",
                identity.name,
                when,
                msg.id,
                out.code,
            )
        else:
            audit.info(
                "alarm ack by %s at %s (request %r): %s",
                identity.name,
                when,
                msg.id,
                ", ".join(out.changed) or "nothing new (acknowledged already)",
            )
        if not out.ok:
            return Error(out.code, out.message, msg.id)
        return Ack("ack_alarm", msg.id, alarms=out.alarms)

    # -- history -----------------------------------------------------------------------

    def history_doc(
        self, topic: str, names: Iterable[str], seconds: float, now: float
    ) -> dict[str, Any] | None:
        fields: dict[str, Any] = {}
        head: dict[str, Any] = {}
        for name in names:
            q = self.history.query(topic, name, seconds, now)
            if q is None:
                continue
            head = {"start": q["start"], "step": q["step"]}
            fields[name] = {"min": q["min"], "max": q["max"], "last": q["last"]}
        if not fields:
            return None
        return {"topic": topic, **head, "fields": fields}

    def history_frames(self, identity: Identity, msg: Subscribe) -> Iterator[bytes]:
        """The ``history`` messages for a new subscription, then ``history_end``.

        A generator: the session writes one frame per event-loop checkpoint, so a
        big history never stalls the loop (one topic's full window is ~10 ms)."""
        assert msg.history_s
        now = self.wall()
        visible = _visible(identity.grants)
        size = 0
        count = 0
        truncated = False
        for topic in self.history.topics():
            if not any(matches(f, topic) for f in msg.filters) or not visible(topic):
                continue
            doc = self.history_doc(topic, self.history.fields(topic), msg.history_s, now)
            if doc is None:
                continue  # evicted meanwhile
            frame = orjson.dumps({"type": "history", "id": msg.id, **doc})
            if size + len(frame) > HISTORY_BUDGET_BYTES:
                truncated = True
                break
            size += len(frame)
            count += 1
            yield frame
        end = {"type": "history_end", "id": msg.id, "topics": count, "truncated": truncated}
        yield orjson.dumps(end)

    # -- HTTP --------------------------------------------------------------------------

    def api(self, path: str, query: dict[str, str], identity: Identity) -> tuple[int, bytes]:
        if path == "/api/meta":
            doc = self.meta.document(self.store.states(), _visible(identity.grants))
            return 200, orjson.dumps(doc)
        if path == "/api/alarms":
            return self._api_alarms(query, identity)
        return self._api_history(query, identity)

    def _api_alarms(self, query: dict[str, str], identity: Identity) -> tuple[int, bytes]:
        show_all = query.get("all") in ("1", "true")
        visible = _visible(with_alarm_grants(identity.grants))
        out = []
        if show_all:  # every alarm topic: those whose rule is gone (no engine alarm) too
            keys: Iterable[str] = self.store.tree.matching(ALARM_PREFIX + "#")
        else:
            keys = (alarm.key for alarm in self.alarms.open_alarms())
        for key in keys:
            if not visible(key):
                continue
            st = self.store.get(key)
            if st is not None and st.seq and "state" in st.fields:
                out.append({"alarm": key, "seq": st.seq, **st.fields})
        rank = {"critical": 0, "major": 1, "minor": 2, "warning": 3}
        out.sort(
            key=lambda a: (
                a.get("active") is not True,
                rank.get(a.get("severity"), len(rank)),  # type: ignore[arg-type]
                -(a.get("raised_at") or 0),
            )
        )
        return 200, orjson.dumps({"epoch": self.store.epoch, "alarms": out})

    async def api_history_sample(
        self, query: dict[str, str], identity: Identity, max_topic_bytes: int
    ) -> tuple[int, bytes]:
        """``/api/history?filter=F[&field=F][&seconds=S][&limit=N]``: ``{"matched": M,
        "items": [documents like /api/history?topic=]}``, at most ``limit`` of the M
        topics with history (of ``field`` when given) that match F and the identity
        may see, evenly spread."""
        try:
            flt = validate_filter(query.get("filter", ""), max_topic_bytes)
        except TopicError as err:
            return 400, _err("bad_filter", f"filter: {err}")
        seconds = self._seconds(query)
        if seconds is None:
            return 400, _err("bad_seconds", "seconds: expected a number > 0")
        try:
            limit = int(query.get("limit", HISTORY_SAMPLE_DEFAULT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= HISTORY_SAMPLE_MAX:
            return 400, _err("bad_limit", f"limit: expected 1 to {HISTORY_SAMPLE_MAX}")
        visible = _visible(identity.grants)
        name = query.get("field")
        history = self.history
        # "<prefix>/#" (a wall's group) is a prefix test, ~20 times cheaper than
        # matches(): more topics per checkpoint (each costs a loop round when busy)
        head, _, tail = flt.rpartition("/")
        prefix = (
            head + "/" if tail == "#" and head and "+" not in head and "#" not in head else None
        )
        step = HISTORY_SAMPLE_STEP * (10 if prefix else 1)
        found: list[str] = []
        for i, topic in enumerate(history.topics()):
            if i % step == step - 1:
                await trio.lowlevel.checkpoint()
            if prefix is not None:
                if not (topic.startswith(prefix) or topic == head):
                    continue
            elif not matches(flt, topic):
                continue
            if visible(topic) and (name is None or history.has(topic, name)):
                found.append(topic)
        spread = max(1.0, len(found) / limit)
        picked = [found[int(k * spread)] for k in range(min(limit, len(found)))]
        # a field's window a step (~0.7 ms for 600 buckets), each item encoded on its
        # own: a topic's window a step and one encoding of the whole answer (100 topics
        # of 3 fields: 3 MB) made steps of up to 10 and 20 ms
        items: list[bytes] = []
        for topic in picked:
            doc: dict[str, Any] | None = None
            now = self.wall()  # one window for the topic's fields
            for one in [name] if name else self.history.fields(topic):
                await trio.lowlevel.checkpoint()
                part = self.history_doc(topic, [one], seconds, now)
                if part is None:
                    continue
                if doc is None:
                    doc = part
                else:
                    doc["fields"].update(part["fields"])
            if doc is not None:
                items.append(orjson.dumps(doc))
        opening = b'{"matched":%d,"items":[' % len(found)
        return 200, b"".join((opening, b",".join(items), b"]}"))

    def _seconds(self, query: dict[str, str]) -> float | None:
        try:
            seconds = float(query.get("seconds", self.history.config.window_s))
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds > 0 else None

    def _api_history(self, query: dict[str, str], identity: Identity) -> tuple[int, bytes]:
        topic = query.get("topic", "")
        try:
            validate_topic(topic)
        except TopicError as err:
            return 400, _err("bad_topic", f"topic: {err}")
        if device_of(topic) is not None or not _visible(identity.grants)(topic):
            return 404, _err("not_found", "no history for this topic")
        seconds = self._seconds(query)
        if seconds is None:
            return 400, _err("bad_seconds", "seconds: expected a number > 0")
        name = query.get("field")
        names = [name] if name else self.history.fields(topic)
        doc = self.history_doc(topic, names, seconds, self.wall())
        if doc is None:
            return 404, _err("not_found", "no history for this topic and field")
        return 200, orjson.dumps(doc)


def _err(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


async def send_each(frames: Iterable[bytes], session: Any, sub_id: str) -> None:
    """Write a subscription's history ``frames`` one per event-loop checkpoint (a big
    one never stalls the loop). It stops when the stream closes or the subscription is
    gone, and waits while more than :data:`HISTORY_BACKLOG_BYTES` are queued for the
    peer: the frames are built as they go, so ten connections subscribing and
    unsubscribing ten times a second with ``history_s`` no longer build history for
    subscriptions long gone (the loop stalled for seconds), and a peer that does not
    read no longer gets 240 MB queued (found by an outside check). At most
    :data:`HISTORY_CONCURRENCY` histories are built at once (the others wait their
    turn), so the histories never hold the loop for more than a few topics' windows."""
    async with session.ctx.insight.history_slots:
        for frame in frames:
            while True:
                sub = session.sub
                if session.closing or sub is None or sub_id not in sub.subs:
                    return
                if session.out.queued_bytes <= HISTORY_BACKLOG_BYTES:
                    break
                await trio.sleep(0.05)
            session._write_text(frame)
            await trio.lowlevel.checkpoint()
