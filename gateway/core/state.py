"""Topic state: flat field maps with per-field versions, tombstones and deadbands.

Invariants (every other module and every client relies on these):

1. ``seq`` of a topic starts at 0 (no data) and grows by exactly one per accepted
   change. A change is any message that altered at least one field, removed one,
   or altered the topic's presence (``online``) or freshness (``stale``). Topics are
   never deleted (only cleared), so a ``(epoch, topic, seq)`` triple names one
   state for the whole life of the process.
2. ``versions[f]`` is the ``seq`` at which field ``f`` last took its current value;
   ``tombstones[f]`` is the ``seq`` at which ``f`` was removed (while remembered).
   ``meta_seq`` is the ``seq`` at which presence/staleness last changed.
3. Hence, for a client holding the state at ``base`` (``floor <= base <= seq``), the
   exact coalesced delta to now is: every field whose version is ``> base``, every
   tombstone ``> base``, and the meta if ``meta_seq > base``. Applying that delta to
   *any* state between ``base`` and ``seq`` yields the state at ``seq``, which is
   why a client accepts a delta whenever ``delta.base <= its seq``.
4. At most ``max_tombstones`` removals are remembered per topic. Forgetting the
   oldest one raises ``floor`` to its ``seq``: a base below ``floor`` gets a
   snapshot, because it might miss that removal.
5. A numeric change smaller than the field's deadband (compared with the last
   *accepted* value, so slow drift still gets through) is not a change.
6. Stale by default: each topic learns its reporting interval, an exponentially
   weighted average (weight :data:`INTERVAL_ALPHA`) of the time between reports,
   where messages less than :data:`REPORT_GAP_S` after the start of a report
   belong to that report (a device sending its fields as separate messages, or
   faster than the gap). A topic silent for ``stale_multiple`` times its interval,
   bounded by ``stale_floor_s`` and ``stale_ceiling_s``, is stale, unless a
   ``stale_after`` rule matches it (the rule wins). A topic with no interval yet
   (one report so far), and topics starting with ``$``, are never marked by this.

Time is always a parameter (``now``: the gateway's wall-clock receive time in
seconds); nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, TypeAlias

from .topics import RuleTable, TopicTree, validate_topic

__all__ = [
    "Deadband",
    "Delta",
    "InvalidUpdate",
    "JsonValue",
    "Snapshot",
    "StateStats",
    "StateStore",
    "TopicState",
    "UpdateMode",
]

JsonValue: TypeAlias = (
    Any  # None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]
)

_MISSING: Final = object()
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1  # what orjson can encode
REPORT_GAP_S: Final = 0.5
INTERVAL_ALPHA: Final = 0.25


class InvalidUpdate(ValueError):
    """An update the store refuses as a whole; ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UpdateMode(Enum):
    #: Fields given are set; a ``None`` value removes the field (RFC 7396 style);
    #: fields not given are left alone.
    MERGE = "merge"
    #: The given object becomes the whole state: fields not given are removed.
    REPLACE = "replace"


_REPLACE: Final = UpdateMode.REPLACE


@dataclass(frozen=True, slots=True)
class Deadband:
    """A numeric change is news only if ``|new - old| >= max(abs, rel * |old|)``."""

    abs: float = 0.0
    rel: float = 0.0

    def __post_init__(self) -> None:
        for name in ("abs", "rel"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"deadband {name} must be a number >= 0, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"deadband {name} must be finite, got {v!r}")

    def suppresses(self, old: float, new: float) -> bool:
        band = max(self.abs, self.rel * abs(old))
        return abs(new - old) < band


#: Deadbands of one topic: field name -> band; the name "*" applies to every
#: numeric field without its own entry.
FieldBands: TypeAlias = Mapping[str, Deadband]


@dataclass(slots=True)
class TopicState:
    topic: str
    seq: int = 0
    fields: dict[str, JsonValue] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)  # insertion order = removal order
    floor: int = 0
    meta_seq: int = 0
    online: bool | None = None  # None: no presence information for this topic
    stale: bool = False
    device_ts: float | None = None  # device timestamp of the last change
    changed_at: float = 0.0  # gateway receive time of the last change
    seen_at: float = 0.0  # gateway receive time of the last message, changed or not
    gseq: int = 0  # the store's change count at this topic's last change (SSE resume)
    report_at: float | None = None  # start of the last report (invariant 6)
    interval: float = 0.0  # learned reporting interval; 0: not known yet


@dataclass(frozen=True, slots=True)
class Snapshot:
    topic: str
    seq: int
    fields: Mapping[str, JsonValue]
    online: bool | None
    stale: bool
    ts: float | None
    rx: float
    #: Why a snapshot was sent where a delta was asked for: "" (none was asked),
    #: "window" (base older than the tombstone window), "ahead" (base newer than the
    #: topic: not ours), or "size" (the delta would be larger).
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Delta:
    topic: str
    base: int
    seq: int
    set: Mapping[str, JsonValue]
    unset: tuple[str, ...]
    ts: float | None
    rx: float
    meta: bool  # whether online/stale changed after base (then they are sent)
    online: bool | None
    stale: bool


@dataclass(slots=True)
class StateStats:
    """Counters for metrics; the store only ever increments them."""

    messages: int = 0  # apply() calls that passed validation
    changes: int = 0  # seq bumps
    fields_changed: int = 0
    fields_removed: int = 0
    unchanged: int = 0  # field values equal to the current value
    retained_old: int = 0  # broker-stored messages that told nothing new (apply, presence)
    deadband_suppressed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    stale_marked: int = 0
    snapshots_instead: dict[str, int] = field(default_factory=dict)  # reason -> count

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class StateStore:
    """All topic states of one gateway epoch."""

    def __init__(
        self,
        epoch: str,
        *,
        deadbands: RuleTable[FieldBands] | None = None,
        stale_after: RuleTable[float] | None = None,
        max_topics: int = 1_000_000,
        max_fields: int = 256,
        max_field_name: int = 128,
        max_tombstones: int = 32,
        max_topic_bytes: int = 1024,
        stale_learn: bool = True,
        stale_multiple: float = 3.0,
        stale_floor_s: float = 5.0,
        stale_ceiling_s: float = 3600.0,
    ) -> None:
        if not epoch:
            raise ValueError("epoch must be a non-empty string")
        self.epoch: Final = epoch
        self.deadbands: RuleTable[FieldBands] = deadbands or RuleTable()
        self.stale_after: RuleTable[float] = stale_after or RuleTable()
        self.max_topics = max_topics
        self.max_fields = max_fields
        self.max_field_name = max_field_name
        self.max_tombstones = max_tombstones
        self.max_topic_bytes = max_topic_bytes
        self.stale_learn = stale_learn
        self.stale_multiple = stale_multiple
        self.stale_floor_s = stale_floor_s
        self.stale_ceiling_s = stale_ceiling_s
        self.stats = StateStats()
        #: every accepted change of every topic, in order: a topic's ``gseq`` is its
        #: last change's number here. The SSE resume id and the hub's "sent up to"
        #: mark count in it; a checkpoint restores it (``stats.changes`` is a metric)
        self.changes = 0
        #: called (with no arguments) when the first change after a drain happens: the
        #: shell uses it to wake its tick loop, which sleeps while nothing changes
        self.on_change: Callable[[], None] | None = None
        #: called with (state, now) after every seq bump (alarms, history); it may
        #: apply changes to other topics, never to the one it is called for
        self.on_accept: Callable[[TopicState, float], None] | None = None
        self._topics: dict[str, TopicState] = {}
        #: every topic name, for enumerating the topics a filter matches
        self.tree = TopicTree()
        self._changed: dict[str, None] = {}  # ordered set of topics changed since drain
        # stale deadlines: a heap of (deadline, topic), valid when _due[topic] is that
        # deadline; every non-stale topic with a message since it was last dropped is
        # in _due (apply() re-arms it), so sweep_stale never scans every topic
        self._deadlines: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._topics)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics

    def get(self, topic: str) -> TopicState | None:
        return self._topics.get(topic)

    def topics(self) -> Iterator[str]:
        return iter(self._topics)

    def states(self) -> Iterator[TopicState]:
        return iter(self._topics.values())

    @property
    def has_changes(self) -> bool:
        return bool(self._changed)

    def drain_changed(self) -> list[str]:
        """Topics changed since the last call, each once, in order of first change."""
        out = list(self._changed)
        self._changed.clear()
        return out

    # -- writing ---------------------------------------------------------------

    def _topic_state(self, topic: str) -> TopicState:
        st = self._topics.get(topic)
        if st is not None:
            return st
        try:
            validate_topic(topic, self.max_topic_bytes)
        except ValueError as err:
            self.stats.reject("bad_topic")
            raise InvalidUpdate("bad_topic", str(err)) from None
        if len(self._topics) >= self.max_topics:
            self.stats.reject("topic_limit")
            raise InvalidUpdate(
                "topic_limit", f"topic limit of {self.max_topics} reached; {topic!r} refused"
            )
        st = TopicState(topic)
        self._topics[topic] = st
        self.tree.add(topic)
        return st

    def _validate(
        self,
        current: Mapping[str, JsonValue],
        topic: str,
        values: Mapping[str, JsonValue],
        device_ts: object,
    ) -> None:
        if device_ts is not None and (
            type(device_ts) not in (int, float) or not math.isfinite(device_ts)  # type: ignore[arg-type]
        ):
            raise InvalidUpdate("bad_timestamp", f"device timestamp {device_ts!r} is not a number")
        max_name = self.max_field_name
        for name, value in values.items():
            if type(name) is not str or not 0 < len(name) <= max_name:
                raise InvalidUpdate(
                    "bad_field", f"field names must be strings of 1 to {max_name} characters"
                )
            t = type(value)  # the common cases inline; _check_value says what is wrong
            if t is float:
                if not _isfinite(value):
                    _check_value(value, name)
            elif t is int:
                if not _INT_MIN <= value <= _INT_MAX:
                    _check_value(value, name)
            elif t is not str and t is not bool and value is not None:
                _check_value(value, name)
        if len(current) + len(values) <= self.max_fields:
            return  # even if every field were new
        new_names = sum(1 for n, v in values.items() if v is not None and n not in current)
        if len(current) + new_names > self.max_fields:
            raise InvalidUpdate(
                "field_limit", f"topic {topic!r} would exceed {self.max_fields} fields"
            )

    def apply(
        self,
        topic: str,
        values: Mapping[str, JsonValue],
        now: float,
        *,
        device_ts: float | None = None,
        mode: UpdateMode = UpdateMode.MERGE,
        retained: bool = False,
    ) -> int:
        """Apply one device message. Returns the new ``seq``, or 0 if nothing changed.

        ``retained``: the broker sent it from its store (an MQTT retained message, on
        every subscribe): old news of unknown age. For a topic the store holds, one
        that changes no field is not the device speaking: it leaves the topic as it
        was, its staleness and deadline too (a restored device that stays silent
        goes stale on its own deadline; the broker's copy of its last message does
        not make it look alive). One that changes fields is news (the device spoke
        after what the store held) and applies as any message.

        Raises :class:`InvalidUpdate` (and changes nothing) if the message is refused.
        """
        existing = self._topics.get(topic)
        try:
            self._validate(existing.fields if existing else {}, topic, values, device_ts)
        except InvalidUpdate as err:
            self.stats.reject(err.reason)
            raise
        if (
            retained
            and existing is not None
            and existing.seq
            and not self._news(existing, values, mode)
        ):
            self.stats.messages += 1
            self.stats.retained_old += 1
            return 0
        st = existing or self._topic_state(topic)
        stats = self.stats
        stats.messages += 1
        if st.report_at is None:
            st.report_at = now
        elif now - st.report_at >= REPORT_GAP_S:
            gap = now - st.report_at
            before = st.interval
            st.interval = gap if not before else before + INTERVAL_ALPHA * (gap - before)
            st.report_at = now
            if st.interval < before:
                # a shorter limit may bring the deadline before the one on the heap;
                # re-arm only then (a push per message would outgrow the sweep's pops).
                # With no stale_after rule a limit is learned, so at least the floor:
                # when even that cannot bring it before, stale_limit() is not asked
                due = self._due.get(topic)
                least = 0.0 if self.stale_after.rules else self.stale_floor_s
                if due is not None and now + min(least, self.stale_ceiling_s) < due:
                    limit = self.stale_limit(st)
                    if limit is not None and now + limit < due:
                        self._watch(topic, now + limit)
        st.seen_at = now
        if topic not in self._due:
            self._watch(topic, now)  # the next sweep computes the real deadline
        fields = st.fields
        versions = st.versions
        tombstones = st.tombstones
        seq = st.seq + 1
        bands = self.deadbands.lookup(topic) if self.deadbands.rules else None
        changed = removed = 0
        for name, value in values.items():
            if value is None:
                if name in fields:
                    self._remove(st, name, seq)
                    removed += 1
                continue
            old = fields.get(name, _MISSING)
            if old is not _MISSING:
                if type(old) is type(value) and old == value:
                    stats.unchanged += 1
                    continue
                if bands and type(old) in (int, float) and type(value) in (int, float):
                    band = bands.get(name) or bands.get("*")
                    if band is not None and band.suppresses(old, value):
                        stats.deadband_suppressed += 1
                        continue
            fields[name] = value
            versions[name] = seq
            if tombstones:
                tombstones.pop(name, None)
            changed += 1
        if mode is _REPLACE:
            for name in [n for n in fields if n not in values]:
                self._remove(st, name, seq)
                removed += 1
        meta = st.stale
        if meta:
            st.stale = False
            st.meta_seq = seq
        if not (changed or removed or meta):
            return 0
        stats.fields_changed += changed
        stats.fields_removed += removed
        if device_ts is not None:
            st.device_ts = float(device_ts)
        self._bump(st, seq, now)
        return seq

    def _news(self, st: TopicState, values: Mapping[str, JsonValue], mode: UpdateMode) -> bool:
        """Whether :meth:`apply` of ``values`` would change a field of ``st``."""
        fields = st.fields
        bands = self.deadbands.lookup(st.topic) if self.deadbands.rules else None
        for name, value in values.items():
            old = fields.get(name, _MISSING)
            if value is None:
                if old is not _MISSING:
                    return True
                continue
            if old is _MISSING:
                return True
            if type(old) is type(value) and old == value:
                continue
            if bands and type(old) in (int, float) and type(value) in (int, float):
                band = bands.get(name) or bands.get("*")
                if band is not None and band.suppresses(old, value):
                    continue
            return True
        return mode is _REPLACE and any(n not in values for n in fields)

    def set_presence(self, topic: str, online: bool, now: float, *, retained: bool = False) -> int:
        """Record a device's online/offline status (from a status topic or last will).

        Returns the new ``seq`` or 0 if the status did not change. Coming online
        also counts as being seen; going offline does not clear ``stale``.
        ``retained`` (the broker's stored status, sent on every subscribe): when it
        says what the store holds already, it is not the device speaking (a device
        that died without a last will leaves ``online`` retained for good) and
        changes nothing, staleness included (see :meth:`apply`).
        """
        existing = self._topics.get(topic)
        if retained and existing is not None and existing.seq and existing.online is online:
            self.stats.retained_old += 1
            return 0
        st = existing or self._topic_state(topic)
        if online:
            st.seen_at = now
            if topic not in self._due:
                self._watch(topic, now)  # the next sweep computes the real deadline
        if st.online is online and not (online and st.stale):
            return 0
        seq = st.seq + 1
        st.online = online
        if online:
            st.stale = False
        st.meta_seq = seq
        self._bump(st, seq, now)
        return seq

    def stale_limit(self, st: TopicState) -> float | None:
        """Seconds of silence after which ``st`` is stale (invariant 6), or None."""
        limit = self.stale_after.lookup(st.topic)
        if limit is None and self.stale_learn and st.interval and st.topic[:1] != "$":
            limit = min(
                max(st.interval * self.stale_multiple, self.stale_floor_s), self.stale_ceiling_s
            )
        return limit

    def _watch(self, topic: str, at: float) -> None:
        self._due[topic] = at
        heapq.heappush(self._deadlines, (at, topic))

    def sweep_stale(self, now: float, max_checks: int = 10_000) -> list[str]:
        """Mark topics silent for longer than their stale limit as stale.

        Only topics whose deadline has passed are looked at (a heap of deadlines,
        re-armed lazily from ``seen_at``), at most ``max_checks`` per call; the rest
        wait for the next call. So a sweep costs O(due topics), not O(topics).
        """
        marked: list[str] = []
        heap, due = self._deadlines, self._due
        checks = 0
        while heap and heap[0][0] < now and checks < max_checks:
            checks += 1
            at, topic = heapq.heappop(heap)
            if due.get(topic) != at:
                continue  # superseded by a later entry
            st = self._topics[topic]
            limit = None if st.stale else self.stale_limit(st)
            if limit is None:
                del due[topic]  # stale, or no limit yet: the next message re-arms it
                continue
            deadline = st.seen_at + limit
            if not deadline < now:
                self._watch(topic, deadline)
                continue
            del due[topic]
            seq = st.seq + 1
            st.stale = True
            st.meta_seq = seq
            self._bump(st, seq, now, changed_at=False)
            marked.append(st.topic)
        self.stats.stale_marked += len(marked)
        return marked

    def mark_all_stale(self, now: float) -> int:
        """Mark every topic stale at once (the data source is gone). Returns how many."""
        return sum(self.mark_all_stale_steps(now))

    def mark_all_stale_steps(self, now: float, batch: int = 1000) -> Iterator[int]:
        """:meth:`mark_all_stale` in slices of ``batch`` topics: yields how many each
        slice marked (the shell checkpoints between slices; 50,000 topics with their
        alarm rules and history take far longer than a loop may stall). A topic that
        changed between two slices (its ``gseq`` is past the store's change count at
        the start: no clock involved) is left as it is."""
        topics = list(self._topics.values())  # on_accept may add (alarm) topics
        start = self.changes
        for i in range(0, len(topics), batch):
            count = 0
            for st in topics[i : i + batch]:
                # alarms ($) are the gateway's own
                if not st.stale and st.topic[:1] != "$" and st.gseq <= start:
                    seq = st.seq + 1
                    st.stale = True
                    st.meta_seq = seq
                    self._bump(st, seq, now, changed_at=False)
                    count += 1
            self.stats.stale_marked += count
            yield count

    def stale_due(self, now: float) -> bool:
        """True if a topic's stale deadline has passed (:meth:`sweep_stale` has work)."""
        heap = self._deadlines
        return bool(heap) and heap[0][0] < now

    def restore(self, st: TopicState) -> bool:
        """Adopt a topic read from a checkpoint (gateway/persist.py), before serving.

        The honest-freshness rule, as if the gateway had never stopped: the topic
        keeps its last receive time (``seen_at``) and learned interval. With a stale
        limit (a ``stale_after`` rule or a learned interval) it is armed on the
        deadline heap at ``seen_at + limit``, and :meth:`sweep_stale` marks it stale
        if its device stays silent (at the first sweep if that time has passed), so
        a restore by itself changes nothing a client holds. Without a limit (a
        device that spoke once) it is marked stale at once: a change, so its
        ``seq`` grows past any a client may hold. A stale topic stays stale, and
        ``$`` topics (alarms) come back as they were.
        Returns False (and adopts nothing) for a known topic or past ``max_topics``.
        """
        if st.topic in self._topics or len(self._topics) >= self.max_topics:
            return False
        self._topics[st.topic] = st
        self.tree.add(st.topic)  # groups find their topics through the tree (hub.py)
        if st.stale or st.topic[:1] == "$":
            return True
        limit = self.stale_limit(st)
        if limit is not None:
            self._watch(st.topic, st.seen_at + limit)
            return True
        seq = st.seq + 1
        st.stale = True
        st.meta_seq = seq
        self._bump(st, seq, st.changed_at, changed_at=False)
        self.stats.stale_marked += 1
        return True

    def apply_replica(self, rec: TopicState) -> int | None:
        """Adopt the authority's state of one topic (a replica store: gateway/cluster).

        A replica never decides anything itself: ``rec`` is the authority's whole
        record (seq, fields, versions, tombstones, floor, presence, staleness, gseq),
        and the replica takes it as is, so a client's ``(epoch, topic, seq)`` names
        the same state in every replica and deltas from any of them apply. Records of
        a topic arrive in seq order or out of it (a full sync interleaved with the
        change stream): one the replica holds already, or an older one, is ignored.
        Returns the seq the replica held before (0 for a new topic), or None if
        ``rec`` was ignored. The stale sweep has nothing to do on a replica (no
        deadline is armed here), and ``on_accept`` is not called: the caller knows
        which fields changed since the returned seq. The staleness bookkeeping
        (``seen_at``, ``report_at``, ``interval``) is the authority's as of the
        topic's last change: messages that change nothing are not replicated.
        """
        st = self._topics.get(rec.topic)
        if st is None:
            prev = 0
            self._topics[rec.topic] = st = rec
            self.tree.add(rec.topic)
        elif rec.seq <= st.seq:
            return None
        else:
            prev = st.seq
            for name in TopicState.__slots__:
                setattr(st, name, getattr(rec, name))
        if rec.gseq > self.changes:
            self.changes = rec.gseq
        self.stats.changes += 1
        if not self._changed and self.on_change is not None:
            self.on_change()
        self._changed[st.topic] = None
        return prev

    def _remove(self, st: TopicState, name: str, seq: int) -> None:
        del st.fields[name]
        del st.versions[name]
        tomb = st.tombstones
        tomb[name] = seq
        if len(tomb) > self.max_tombstones:
            oldest = next(iter(tomb))
            st.floor = max(st.floor, tomb.pop(oldest))

    def _bump(self, st: TopicState, seq: int, now: float, *, changed_at: bool = True) -> None:
        st.seq = seq
        if changed_at:
            st.changed_at = now
        self.stats.changes += 1
        self.changes += 1
        st.gseq = self.changes
        if not self._changed and self.on_change is not None:
            self.on_change()
        self._changed[st.topic] = None
        if self.on_accept is not None:
            self.on_accept(st, now)

    # -- diffs -----------------------------------------------------------------

    def snapshot(self, topic: str, reason: str = "") -> Snapshot | None:
        st = self._topics.get(topic)
        if st is None:
            return None
        if reason:
            sis = self.stats.snapshots_instead
            sis[reason] = sis.get(reason, 0) + 1
        return Snapshot(
            topic, st.seq, dict(st.fields), st.online, st.stale, st.device_ts, st.changed_at, reason
        )

    def diff(self, topic: str, base: int | None) -> Delta | Snapshot | None:
        """What a client holding ``topic`` at ``base`` needs to reach the current state.

        ``base=None`` means the client holds nothing (or another epoch's data): a
        snapshot. Returns None if there is nothing to send (no such topic, or the
        client is already current).
        """
        st = self._topics.get(topic)
        if st is None:
            return None
        if base is None:
            return self.snapshot(topic)
        if base == st.seq:
            return None
        if base > st.seq:
            return self.snapshot(topic, "ahead")
        if base < st.floor:
            return self.snapshot(topic, "window")
        changed = {k: st.fields[k] for k, v in st.versions.items() if v > base}
        unset = tuple(k for k, v in st.tombstones.items() if v > base)
        if len(changed) + len(unset) > len(st.fields):
            return self.snapshot(topic, "size")
        return Delta(
            topic,
            base,
            st.seq,
            changed,
            unset,
            st.device_ts,
            st.changed_at,
            st.meta_seq > base,
            st.online,
            st.stale,
        )


_isfinite = math.isfinite


def _check_value(value: JsonValue, name: str, depth: int = 0) -> None:
    t = type(value)
    if t is str or t is bool or value is None:
        return
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidUpdate("bad_value", f"field {name!r}: integer out of 64-bit range")
        return
    if t is float:
        if not math.isfinite(value):
            raise InvalidUpdate("bad_value", f"field {name!r}: {value!r} is not a finite number")
        return
    if depth > 16:
        raise InvalidUpdate("bad_value", f"field {name!r}: nested deeper than 16 levels")
    if t is list:
        for item in value:
            _check_value(item, name, depth + 1)
        return
    if t is dict:
        for k, item in value.items():
            if type(k) is not str:
                raise InvalidUpdate("bad_value", f"field {name!r}: object keys must be strings")
            _check_value(item, name, depth + 1)
        return
    raise InvalidUpdate("bad_value", f"field {name!r}: {t.__name__} is not a JSON value")
