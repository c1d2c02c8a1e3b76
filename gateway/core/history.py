"""Chart history: per (topic, numeric field), a fixed ring of time buckets.

Rules:

* Time is cut into buckets of ``resolution_s`` seconds: bucket ``b`` covers
  ``[b * resolution_s, (b + 1) * resolution_s)`` of the store's clock (the
  gateway's wall-clock receive time). A series keeps the last ``window_s /
  resolution_s`` buckets, each with the min, the max and the last value accepted
  in it, as 32-bit floats (``array('f')``: 12 bytes a bucket, about 7 significant
  digits, enough for a chart). A bucket with no accepted value is NaN (``null``
  when served): no change was accepted then (a silent device, or a value the
  deadband or equality suppressed).
* Only accepted changes are recorded (the field's version is the topic's new
  ``seq``); booleans, strings and other non-numbers are not history. Topics
  starting with ``$`` (alarms) are not recorded.
* A global cap on the bytes of all buffers: when a new series would exceed it,
  the series updated least recently is evicted if its newest bucket has left the
  window (it shows nothing any more); otherwise the new series is refused. Both
  are counted (``evicted``, ``refused``): what is kept is the series that
  existed first, never a half-filled ring.

* A checkpoint (gateway/persist.py) carries every series: :meth:`History.export`
  and :meth:`History.restore`, in bounded chunks and steps. The rings are kept as
  they were (least recently updated first), so a chart after a restart shows the
  window before it, with empty buckets for the time the gateway was down. Series
  of another ``window_s``/``resolution_s`` do not fit the rings and are not
  restored (:class:`HistoryMismatch`).

Time is a parameter (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .state import TopicState

__all__ = ["History", "HistoryConfig", "HistoryMismatch", "HistoryStats", "Series"]

_NAN: Final = math.nan
_isfinite: Final = math.isfinite
BUCKET_BYTES: Final = 3 * array("f").itemsize
#: the per-series cost besides its buckets (three array headers, the object, the
#: index entries), measured with tracemalloc in bench/history_bench.py
SERIES_OVERHEAD_BYTES: Final = 800


class HistoryMismatch(ValueError):
    """Checkpointed history that does not fit this configuration (or is malformed)."""


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    window_s: float = 600.0
    resolution_s: float = 1.0
    max_bytes: int = 256 << 20  # all buffers together
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.resolution_s) and self.resolution_s > 0):
            raise ValueError("resolution_s: must be a number > 0")
        if not (math.isfinite(self.window_s) and self.window_s >= self.resolution_s):
            raise ValueError("window_s: must be a number >= resolution_s")
        if self.window_s / self.resolution_s > 1_000_000:
            raise ValueError("window_s: window_s / resolution_s must be at most 1,000,000 buckets")
        if self.max_bytes < 0:
            raise ValueError("max_bytes: must be >= 0")

    @property
    def buckets(self) -> int:
        return max(1, round(self.window_s / self.resolution_s))


@dataclass(slots=True)
class HistoryStats:
    series: int = 0
    bytes: int = 0
    samples: int = 0
    refused: int = 0  # new series not kept because of the cap
    evicted: int = 0  # idle series dropped to make room


class Series:
    """One ring; ``head`` is the absolute number of its newest bucket. Bucket ``b``'s
    min, max and last are ``data[3 * (b % size)]`` and the two after it: one array
    (one allocation, one object for the cyclic collector) instead of three."""

    __slots__ = ("data", "head", "size")

    def __init__(self, size: int, bucket: int) -> None:
        self.data = array("f", [_NAN]) * (3 * size)
        self.head = bucket
        self.size = size

    def add(self, bucket: int, value: float) -> None:
        data = self.data
        head = self.head
        if bucket > head:
            # a new bucket: the value is its min, max and last; the buckets skipped
            # since the old head hold nothing
            size = self.size
            for b in range(max(head + 1, bucket - size + 1), bucket):
                j = 3 * (b % size)
                data[j] = data[j + 1] = data[j + 2] = _NAN
            j = 3 * (bucket % size)
            data[j] = data[j + 1] = data[j + 2] = value
            self.head = bucket
            return
        if bucket <= head - self.size:
            return  # older than the ring (a clock step back): not shown anyway
        j = 3 * (bucket % self.size)
        lo = data[j]
        if lo != lo:  # NaN: the bucket's first value
            data[j] = data[j + 1] = data[j + 2] = value
            return
        if value < lo:
            data[j] = value
        elif value > data[j + 1]:
            data[j + 1] = value
        data[j + 2] = value

    def ring(self, which: int) -> array[float]:
        """The min (0), max (1) or last (2) of every bucket, by ring position."""
        return self.data[which::3]

    def window(self, first: int, last: int) -> tuple[list[float | None], ...]:
        """min, max and last lists for buckets ``first..last`` (None: no value)."""
        size = self.size
        head = self.head
        lo = max(first, head - size + 1)  # the oldest bucket the ring still holds
        hi = min(last, head)
        before = [None] * max(0, min(lo, last + 1) - first)
        after = [None] * max(0, last - max(hi, first - 1))
        out: list[list[float | None]] = []
        # float32 back to the decimal it was recorded as: formatting is most of a
        # window's cost, and min, max and last mostly hold the same values
        memo: dict[float, float] = {}
        for which in range(3):
            if lo > hi:
                out.append([None] * (last - first + 1))
                continue
            a, b = lo % size, hi % size
            arr = self.data
            if a <= b:
                vals = arr[3 * a + which : 3 * b + 3 : 3].tolist()
            else:
                vals = arr[3 * a + which :: 3].tolist() + arr[which : 3 * b + 3 : 3].tolist()
            col: list[float | None] = list(before)
            for v in vals:
                if v != v:  # NaN: no value
                    col.append(None)
                    continue
                r = memo.get(v)
                if r is None:
                    r = memo[v] = float("%.7g" % v)  # noqa: UP031
                col.append(r)
            col += after
            out.append(col)
        return out[0], out[1], out[2]


@dataclass(slots=True)
class History:
    config: HistoryConfig = field(default_factory=HistoryConfig)
    stats: HistoryStats = field(default_factory=HistoryStats)
    #: (topic, field) -> series, least recently updated first
    _series: OrderedDict[tuple[str, str], Series] = field(default_factory=OrderedDict)
    _by_topic: dict[str, set[str]] = field(default_factory=dict)
    #: config.buckets and series_bytes, computed once: a history at its byte cap asks
    #: for them on every sample of a series it cannot keep
    _buckets: int = field(init=False, repr=False, default=0)
    _series_bytes: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        self._buckets = self.config.buckets
        self._series_bytes = self._buckets * BUCKET_BYTES + SERIES_OVERHEAD_BYTES

    @property
    def series_bytes(self) -> int:
        return self._series_bytes

    def bucket(self, now: float) -> int:
        return math.floor(now / self.config.resolution_s)

    def record(self, topic: str, values: dict[str, Any], now: float) -> None:
        """Record the numeric values of one accepted change of ``topic``."""
        if not self.config.enabled or topic[:1] == "$":
            return
        bucket = math.floor(now / self.config.resolution_s)
        for name, value in values.items():
            self._add(topic, name, value, bucket)

    def observe(self, st: TopicState, now: float) -> None:
        """Record the fields that changed in ``st``'s latest accepted change.

        The ingest's hot path (every accepted change of every device): :meth:`_add`
        inlined, with the common case (a series' next bucket) written out."""
        if not self.config.enabled or st.topic[:1] == "$":
            return
        bucket = math.floor(now / self.config.resolution_s)
        seq = st.seq
        fields = st.fields
        topic = st.topic
        series = self._series
        added = 0
        for name, version in st.versions.items():
            if version != seq:
                continue
            value = fields[name]
            t = type(value)
            if t is not float:
                if t is not int:
                    continue  # bool is not int here (type(), not isinstance)
            elif not _isfinite(value):
                continue
            key = (topic, name)
            s = series.get(key)
            if s is None:
                s = self._new(key, bucket)
                if s is None:
                    continue
                s.add(bucket, value)
            elif bucket == s.head + 1:  # the next bucket: the value is its min, max, last
                data = s.data
                j = 3 * (bucket % s.size)
                data[j] = data[j + 1] = data[j + 2] = value
                s.head = bucket
                series.move_to_end(key)
            else:
                if bucket != s.head:
                    series.move_to_end(key)  # least recently updated first, by bucket
                s.add(bucket, value)
            added += 1
        self.stats.samples += added

    def observe_since(self, st: TopicState, base: int, now: float) -> None:
        """Record the fields changed in ``st`` after ``base`` (a replica sees the
        authority's changes coalesced: every field changed since the seq it held)."""
        if not self.config.enabled or st.topic[:1] == "$":
            return
        bucket = math.floor(now / self.config.resolution_s)
        fields = st.fields
        for name, version in st.versions.items():
            if version > base:
                self._add(st.topic, name, fields[name], bucket)

    def _add(self, topic: str, name: str, value: Any, bucket: int) -> None:
        t = type(value)
        if t is not float:
            if t is not int:
                return  # bool is not int here (type(), not isinstance)
        elif not _isfinite(value):
            return
        key = (topic, name)
        series = self._series
        s = series.get(key)
        if s is None:
            s = self._new(key, bucket)
            if s is None:
                return
        elif bucket != s.head:
            series.move_to_end(key)  # least recently updated first, by bucket
        s.add(bucket, value)
        self.stats.samples += 1

    def _new(self, key: tuple[str, str], bucket: int) -> Series | None:
        cost = self._series_bytes
        if self.stats.bytes + cost > self.config.max_bytes:
            oldest = next(iter(self._series.items()), None)
            if oldest is None or oldest[1].head > bucket - self._buckets:
                self.stats.refused += 1
                return None
            self._drop(oldest[0])
            self.stats.evicted += 1
        s = Series(self._buckets, bucket)
        self._series[key] = s
        self._by_topic.setdefault(key[0], set()).add(key[1])
        self.stats.series += 1
        self.stats.bytes += cost
        return s

    def _drop(self, key: tuple[str, str]) -> None:
        del self._series[key]
        names = self._by_topic[key[0]]
        names.discard(key[1])
        if not names:
            del self._by_topic[key[0]]
        self.stats.series -= 1
        self.stats.bytes -= self.series_bytes

    def fields(self, topic: str) -> list[str]:
        return sorted(self._by_topic.get(topic, ()))

    def topics(self) -> list[str]:
        return list(self._by_topic)

    def has(self, topic: str, name: str) -> bool:
        return (topic, name) in self._series

    def query(self, topic: str, name: str, seconds: float, now: float) -> dict[str, Any] | None:
        """The last ``seconds`` (at most the window) of one series, or None.

        ``{"start": t0, "step": s, "min": [...], "max": [...], "last": [...]}``:
        entry ``i`` is the bucket starting at ``t0 + i * s``; the last entry is the
        bucket holding ``now``.
        """
        s = self._series.get((topic, name))
        if s is None:
            return None
        cfg = self.config
        count = max(1, min(cfg.buckets, math.ceil(seconds / cfg.resolution_s)))
        last = self.bucket(now)
        first = last - count + 1
        lo, hi, la = s.window(first, last)
        return {
            "start": first * cfg.resolution_s,
            "step": cfg.resolution_s,
            "min": lo,
            "max": hi,
            "last": la,
        }

    # -- checkpoints -------------------------------------------------------------------
    #
    # Payload: records of a u32 (little-endian) length and that many bytes of JSON;
    # the first is {"resolution_s", "buckets"}, then per series [topic, field, head]
    # followed by its min, max and last rings, each ``buckets`` little-endian float32.

    def export(self, batch: int = 100) -> Iterator[bytes]:
        """The checkpoint payload, ``batch`` series per chunk (each series whole)."""
        cfg = self.config
        yield _record({"resolution_s": cfg.resolution_s, "buckets": cfg.buckets})
        keys = list(self._series)  # series may come and go between chunks
        for i in range(0, len(keys), batch):
            parts: list[bytes] = []
            for key in keys[i : i + batch]:
                s = self._series.get(key)
                if s is None:
                    continue
                parts.append(_record([key[0], key[1], s.head]))
                for arr in (s.ring(0), s.ring(1), s.ring(2)):
                    if sys.byteorder == "big":
                        arr = array("f", arr)
                        arr.byteswap()
                    parts.append(arr.tobytes())
            if parts:
                yield b"".join(parts)

    def restore(self, payload: memoryview, batch: int = 100) -> Iterator[int]:
        """Take the series of a checkpoint payload back (before any is recorded),
        yielding after every ``batch`` series (how many so far). Raises
        :class:`HistoryMismatch` if the rings do not fit or the payload is malformed;
        the series restored before stay. Series beyond ``max_bytes`` are refused."""
        cfg = self.config
        head, pos = _read_record(payload, 0)
        if not isinstance(head, dict):
            raise HistoryMismatch("no history header")
        if (head.get("resolution_s"), head.get("buckets")) != (cfg.resolution_s, cfg.buckets):
            raise HistoryMismatch(
                f"rings of {head.get('buckets')} x {head.get('resolution_s')} s do not fit "
                f"{cfg.buckets} x {cfg.resolution_s} s ([history] changed)"
            )
        ring = cfg.buckets * array("f").itemsize
        n = 0
        while pos < len(payload):
            rec, start = _read_record(payload, pos)
            if not (
                type(rec) is list
                and len(rec) == 3
                and type(rec[0]) is str
                and type(rec[1]) is str
                and type(rec[2]) is int
            ):
                raise HistoryMismatch(f"series record {n} is malformed")
            pos = start + 3 * ring
            if pos > len(payload):
                raise HistoryMismatch(f"series record {n} is truncated")
            key = (rec[0], rec[1])
            if key not in self._series and self.config.enabled:
                if self.stats.bytes + self.series_bytes > cfg.max_bytes:
                    self.stats.refused += 1
                else:
                    self._adopt(key, rec[2], payload[start:pos], ring)
            n += 1
            if n % batch == 0:
                yield n
        yield n

    def _adopt(self, key: tuple[str, str], head: int, raw: memoryview, ring: int) -> None:
        s = Series(self.config.buckets, head)
        for i in range(3):
            arr = array("f")
            arr.frombytes(raw[i * ring : (i + 1) * ring])
            if sys.byteorder == "big":
                arr.byteswap()
            s.data[i::3] = arr
        self._series[key] = s
        self._by_topic.setdefault(key[0], set()).add(key[1])
        self.stats.series += 1
        self.stats.bytes += self.series_bytes


_LEN: Final = struct.Struct("<I")


def _record(obj: object) -> bytes:
    raw = orjson.dumps(obj)
    return _LEN.pack(len(raw)) + raw


def _read_record(payload: memoryview, pos: int) -> tuple[Any, int]:
    """The JSON record at ``pos`` and the position after it (HistoryMismatch if bad)."""
    try:
        (size,) = _LEN.unpack_from(payload, pos)
        if pos + _LEN.size + size > len(payload):
            raise ValueError("overruns the payload")
        end = pos + _LEN.size + size
        return orjson.loads(bytes(payload[pos + _LEN.size : end])), end
    except (struct.error, ValueError) as err:  # orjson.JSONDecodeError is a ValueError
        raise HistoryMismatch(f"malformed history record at byte {pos}: {err}") from None
