"""The checkpoint file: every topic state a screen sees, and the epoch, in bytes.

Layout (all integers little-endian)::

    header  (28 bytes)
      magic        8s   b"TGWSTATE"
      version      u16  FORMAT_VERSION; a reader refuses a newer one ("version")
      flags        u16  0 (reserved)
      body_crc     u32  zlib.crc32 of the body
      body_len     u64  length of the body
      header_crc   u32  zlib.crc32 of the 24 bytes above
    body: sections, one after another, each
      name_len     u16, name (UTF-8)
      payload_len  u64, payload

Sections of version 1:

* ``meta``: one JSON object: ``epoch``, ``changes`` (the store's change counter,
  which SSE positions are counted in), ``topics`` (how many records follow),
  ``written_at`` (wall clock).
* ``topics``: one JSON array per line per topic with seq > 0, see :data:`TOPIC_FIELDS`.
  The last two positions (``report_at``, ``interval``: the learned reporting
  interval) were added later; a record without them (an older file) still loads,
  with no interval learned yet.

Extension point: a later module (alarm states, history buffers) adds its own
section under a new name: an encoder that yields its payload in bounded chunks
(the shell awaits a checkpoint between chunks) passed to :func:`assemble` in
``extra``, and a decoder of :attr:`Checkpoint.sections` ``[name]`` at load. A
reader skips sections it does not know (they are listed in
:attr:`Checkpoint.unknown`), so adding a section needs no version bump; changing
the layout of an existing section does.

Sans-io: bytes in, bytes out; the shell (gateway/persist.py) reads and writes files.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .state import StateStore, TopicState

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Checkpoint",
    "CheckpointError",
    "assemble",
    "body_crc",
    "decode_records",
    "decode_topics",
    "encode_records",
    "encode_topics",
    "parse",
]

MAGIC: Final = b"TGWSTATE"
FORMAT_VERSION: Final = 1
_HEAD = struct.Struct("<8sHHIQ")
_HEAD_CRC = struct.Struct("<I")
HEADER_BYTES: Final = _HEAD.size + _HEAD_CRC.size
_SECTION = struct.Struct("<H")
_LEN = struct.Struct("<Q")

#: the positions of a topic record
TOPIC_FIELDS: Final = (
    "topic", "seq", "fields", "versions", "tombstones", "floor", "meta_seq", "online",
    "stale", "device_ts", "changed_at", "seen_at", "gseq", "report_at", "interval",
)  # fmt: skip
#: records of files written before the learned interval was kept end at ``gseq``
_OLD_FIELDS: Final = len(TOPIC_FIELDS) - 2


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint. ``reason`` is a metric label:
    ``truncated``, ``corrupt`` or ``version``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Checkpoint:
    version: int
    meta: dict[str, Any]
    sections: dict[str, memoryview]
    crc: int
    unknown: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> str:
        return str(self.meta["epoch"])

    @property
    def changes(self) -> int:
        return int(self.meta["changes"])


# -- writing -------------------------------------------------------------------------


def encode_topics(store: StateStore, batch: int = 1000) -> Iterator[bytes]:
    """The ``topics`` payload, ``batch`` topics per chunk. Each topic is encoded whole
    between two chunks, so a chunk is a consistent copy of its topics even though the
    store goes on changing between chunks (field values are never mutated in place)."""
    states = list(store.states())  # the dict may grow between chunks
    dumps = orjson.dumps
    for i in range(0, len(states), batch):
        lines = [dumps(_record(st)) for st in states[i : i + batch] if st.seq]
        if lines:
            lines.append(b"")
            yield b"\n".join(lines)


def encode_records(states: Iterable[TopicState]) -> bytes:
    """Records of ``states`` (those with data) as one JSON array of topic records: the
    change stream of ``gateway run --workers N`` (gateway/cluster), read back by
    :func:`decode_records`."""
    return orjson.dumps([_record(st) for st in states if st.seq])


def decode_records(payload: bytes) -> list[TopicState]:
    """The states of an :func:`encode_records` payload. Its writer is this program (a
    parent process and its worker), so records are taken as they are, without the
    per-field checks a file from disk gets (:func:`decode_topics`): a third of the
    cost. Raises CheckpointError on a payload of another shape."""
    try:
        recs = orjson.loads(payload)
        return [TopicState(*rec) for rec in recs]
    except (ValueError, TypeError) as err:
        raise CheckpointError("corrupt", f"records: {err}") from None


def _record(st: TopicState) -> list[Any]:
    return [
        st.topic, st.seq, st.fields, st.versions, st.tombstones, st.floor, st.meta_seq,
        st.online, st.stale, st.device_ts, st.changed_at, st.seen_at, st.gseq,
        st.report_at, st.interval,
    ]  # fmt: skip


def assemble(
    meta: Mapping[str, Any],
    topics: list[bytes],
    extra: Mapping[str, list[bytes]] | None = None,
) -> tuple[bytes, list[bytes]]:
    """The sections as chunks, and the header to write before them (the body's CRC
    is computed here: call it from a worker thread for a large body; zlib releases
    the GIL on large buffers)."""
    body: list[bytes] = []
    sections: list[tuple[str, Iterable[bytes]]] = [
        ("meta", [orjson.dumps(dict(meta))]),
        ("topics", topics),
        *(extra or {}).items(),
    ]
    for name, chunks in sections:
        raw = name.encode()
        chunks = list(chunks)
        body.append(_SECTION.pack(len(raw)) + raw + _LEN.pack(sum(map(len, chunks))))
        body.extend(chunks)
    crc = 0
    length = 0
    for chunk in body:
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, crc, length)
    return head + _HEAD_CRC.pack(zlib.crc32(head)), body


def body_crc(head: bytes) -> int:
    """The body CRC an :func:`assemble` header carries (the clean marker names it)."""
    crc: int = _HEAD.unpack_from(head)[3]
    return crc


# -- reading -------------------------------------------------------------------------


def parse(data: bytes) -> Checkpoint:
    """Check the header and the checksum, split the sections. Raises CheckpointError."""
    if len(data) < HEADER_BYTES:
        if data and not MAGIC.startswith(data[: len(MAGIC)]):
            raise CheckpointError("corrupt", "not a checkpoint file (wrong magic)")
        raise CheckpointError("truncated", f"{len(data)} bytes, shorter than the header")
    magic, version, _flags, body_crc, body_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError("corrupt", "not a checkpoint file (wrong magic)")
    (head_crc,) = _HEAD_CRC.unpack_from(data, _HEAD.size)
    if zlib.crc32(data[: _HEAD.size]) != head_crc:
        raise CheckpointError("corrupt", "header checksum mismatch")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            "version", f"format version {version} is newer than this gateway's {FORMAT_VERSION}"
        )
    body = memoryview(data)[HEADER_BYTES:]
    if len(body) < body_len:
        raise CheckpointError("truncated", f"body has {len(body)} of {body_len} bytes")
    if len(body) > body_len:
        raise CheckpointError("corrupt", f"{len(body) - body_len} bytes after the body")
    if zlib.crc32(body) != body_crc:
        raise CheckpointError("corrupt", "body checksum mismatch")
    sections: dict[str, memoryview] = {}
    pos = 0
    try:
        while pos < body_len:
            (n,) = _SECTION.unpack_from(body, pos)
            name = bytes(body[pos + 2 : pos + 2 + n]).decode()
            (size,) = _LEN.unpack_from(body, pos + 2 + n)
            start = pos + 2 + n + _LEN.size
            if start + size > body_len or name in sections:
                raise ValueError(f"section {name!r} overruns the body or repeats")
            sections[name] = body[start : start + size]
            pos = start + size
        meta = orjson.loads(sections.pop("meta"))
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("epoch"), str)
            and meta["epoch"]
            and type(meta.get("changes")) is int
            and type(meta.get("topics")) is int
        ):
            raise ValueError("meta lacks epoch, changes or topics")
        if "topics" not in sections:
            raise ValueError("no topics section")
    except (struct.error, UnicodeDecodeError, KeyError, ValueError) as err:
        raise CheckpointError("corrupt", f"bad section layout: {err}") from None
    unknown = [name for name in sections if name not in ("topics",)]
    return Checkpoint(version, meta, sections, body_crc, unknown)


def decode_topics(payload: memoryview, out: list[TopicState], batch: int = 1000) -> Iterator[int]:
    """Decode the ``topics`` payload into ``out``, yielding after every ``batch`` records
    (how many so far). Raises CheckpointError on a malformed record."""
    data = bytes(payload)
    pos = 0
    end = len(data)
    loads = orjson.loads
    n = 0
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise CheckpointError("corrupt", f"topic record {n} is not terminated")
        try:
            out.append(_topic(loads(data[pos:nl])))
        except (ValueError, TypeError) as err:
            raise CheckpointError("corrupt", f"topic record {n}: {err}") from None
        pos = nl + 1
        n += 1
        if n % batch == 0:
            yield n
    yield n


def _topic(rec: Any) -> TopicState:
    if type(rec) is not list or len(rec) not in (len(TOPIC_FIELDS), _OLD_FIELDS):
        raise ValueError("not a topic record")
    if len(rec) == _OLD_FIELDS:
        rec = [*rec, None, 0.0]
    (topic, seq, fields, versions, tombs, floor, meta_seq, online, stale, ts, rx, seen, gseq,
     report_at, interval) = rec  # fmt: skip
    ok = (
        type(topic) is str
        and all(type(v) is int and v >= 0 for v in (seq, floor, meta_seq, gseq))
        and type(fields) is dict
        and type(versions) is dict
        and type(tombs) is dict
        and set(fields) == set(versions)
        and all(type(v) is int and 0 < v <= seq for v in (*versions.values(), *tombs.values()))
        and online in (None, True, False)
        and type(stale) is bool
        and (ts is None or type(ts) in (int, float))
        and all(type(v) in (int, float) for v in (rx, seen))
        and (report_at is None or type(report_at) in (int, float))
        and type(interval) in (int, float)
        and interval >= 0
        and seq > 0
        and floor <= seq
        and meta_seq <= seq
    )
    if not ok:
        raise ValueError(f"fields out of shape for {str(topic)[:100]!r}")
    return TopicState(
        topic, seq, fields, versions, tombs, floor, meta_seq, online, stale,
        None if ts is None else float(ts), float(rx), float(seen), gseq,
        None if report_at is None else float(report_at), float(interval),
    )  # fmt: skip
