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

Time is always a parameter (``now``: the gateway's wall-clock receive time in
seconds); nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, TypeAlias

from .topics import RuleTable, validate_topic

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
        self.stats = StateStats()
        #: every accepted change of every topic, in order: a topic's ``gseq`` is its
        #: last change's number here. The SSE resume id and the hub's "sent up to"
        #: mark count in it; a checkpoint restores it (``stats.changes`` is a metric)
        self.changes = 0
        #: called (with no arguments) when the first change after a drain happens: the
        #: shell uses it to wake its tick loop, which sleeps while nothing changes
        self.on_change: Callable[[], None] | None = None
        self._topics: dict[str, TopicState] = {}
        self._changed: dict[str, None] = {}  # ordered set of topics changed since drain

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
        new_names = 0
        for name, value in values.items():
            if type(name) is not str or not 0 < len(name) <= self.max_field_name:
                raise InvalidUpdate(
                    "bad_field",
                    f"field names must be strings of 1 to {self.max_field_name} characters",
                )
            if value is not None:
                _check_value(value, name)
                if name not in current:
                    new_names += 1
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
    ) -> int:
        """Apply one device message. Returns the new ``seq``, or 0 if nothing changed.

        Raises :class:`InvalidUpdate` (and changes nothing) if the message is refused.
        """
        existing = self._topics.get(topic)
        try:
            self._validate(existing.fields if existing else {}, topic, values, device_ts)
        except InvalidUpdate as err:
            self.stats.reject(err.reason)
            raise
        st = existing or self._topic_state(topic)
        stats = self.stats
        stats.messages += 1
        st.seen_at = now
        fields = st.fields
        versions = st.versions
        tombstones = st.tombstones
        seq = st.seq + 1
        bands = self.deadbands.lookup(topic)
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
        if mode is UpdateMode.REPLACE:
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

    def set_presence(self, topic: str, online: bool, now: float) -> int:
        """Record a device's online/offline status (from a status topic or last will).

        Returns the new ``seq`` or 0 if the status did not change. Coming online
        also counts as being seen; going offline does not clear ``stale``.
        """
        st = self._topic_state(topic)
        if online:
            st.seen_at = now
        if st.online is online and not (online and st.stale):
            return 0
        seq = st.seq + 1
        st.online = online
        if online:
            st.stale = False
        st.meta_seq = seq
        self._bump(st, seq, now)
        return seq

    def sweep_stale(self, now: float) -> list[str]:
        """Mark topics silent for longer than their ``stale_after`` rule as stale."""
        marked: list[str] = []
        if not self.stale_after.rules:
            return marked
        lookup = self.stale_after.lookup
        for st in self._topics.values():
            if st.stale:
                continue
            limit = lookup(st.topic)
            if limit is not None and now - st.seen_at > limit:
                seq = st.seq + 1
                st.stale = True
                st.meta_seq = seq
                self._bump(st, seq, now, changed_at=False)
                marked.append(st.topic)
        self.stats.stale_marked += len(marked)
        return marked

    def mark_all_stale(self, now: float) -> int:
        """Mark every topic stale at once (the data source is gone). Returns how many."""
        count = 0
        for st in self._topics.values():
            if not st.stale:
                seq = st.seq + 1
                st.stale = True
                st.meta_seq = seq
                self._bump(st, seq, now, changed_at=False)
                count += 1
        self.stats.stale_marked += count
        return count

    def restore(self, st: TopicState) -> bool:
        """Adopt a topic read from a checkpoint (gateway/persist.py), before serving.

        It comes back stale until its device or a retained message speaks again;
        marking it is a change, so its ``seq`` grows past any a client may hold.
        Returns False (and adopts nothing) for a known topic or past ``max_topics``.
        """
        if st.topic in self._topics or len(self._topics) >= self.max_topics:
            return False
        self._topics[st.topic] = st
        if not st.stale:
            seq = st.seq + 1
            st.stale = True
            st.meta_seq = seq
            self._bump(st, seq, st.changed_at, changed_at=False)
            self.stats.stale_marked += 1
        return True

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
