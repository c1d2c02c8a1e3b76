"""The hub: subscriptions, per-tick fan-out decisions and the encode-once cache.

The shell (gateway/serve) drives it with plain calls and numbers:

* ``tick(now)`` at ``tick_hz``: moves the store's changed topics into the groups
  that carry them, lets each due group tick (encoding its frames once), and
  returns the subscribers that now have something to send. It never waits on a
  subscriber: waking writers is the shell's job.
* ``take(sub, now)`` from the subscriber's own writer: the frames to write now,
  built from the member cursors (see outbox.py for the policy).
* ``write_begun``/``write_done`` around each write, and ``find_slow(now)`` about
  once a second, which names the subscribers to close with 4008.

``now`` here is the shell's monotonic clock in seconds; the store's times are wall
clock. Nothing in this module reads either.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .outbox import Group, GroupKey, Member, OutboxStats, Subscriber, Subscription, TickRecord
from .protocol import (
    Ack,
    Error,
    Resume,
    Subscribe,
    Unsubscribe,
    batch_overhead,
    encode_batch,
    encode_state,
)
from .state import Snapshot, StateStore, TopicState
from .topics import SubscriptionIndex, filter_covers, filters_overlap, matches

__all__ = ["Hub", "HubConfig", "Subscriber", "Subscription"]


@dataclass(frozen=True, slots=True)
class HubConfig:
    tick_hz: float = 20.0  # the hub's own tick; subscription rates divide it
    default_rate_hz: float = 10.0
    max_subscriptions: int = 32  # per connection
    max_frame_bytes: int = 1 << 20  # state frames are split above this
    ring_ticks: int = 16  # how many missed ticks a lagging member can coalesce
    stall_s: float = 10.0  # a write blocked this long: disconnect (4008)
    max_lag_s: float = 30.0  # data waiting this long for a subscriber: disconnect (4008)
    cache_bytes: int = 8 << 20  # bound of the encode-once fragment cache
    max_positions: int = 100_000  # resume positions one connection may hold

    def __post_init__(self) -> None:
        for name in ("tick_hz", "default_rate_hz", "stall_s", "max_lag_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.default_rate_hz > self.tick_hz:
            raise ValueError("default_rate_hz must not exceed tick_hz")
        if self.ring_ticks < 2 or self.max_subscriptions < 1 or self.max_frame_bytes < 1024:
            raise ValueError("ring_ticks >= 2, max_subscriptions >= 1, max_frame_bytes >= 1024")


class Hub:
    def __init__(self, store: StateStore, config: HubConfig | None = None) -> None:
        self.store = store
        self.config = config or HubConfig()
        self.stats = OutboxStats()
        self._groups: dict[GroupKey, Group] = {}
        self._index: SubscriptionIndex[Group] = SubscriptionIndex()
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count(1)
        self._tick_count = 0
        # Two generations: a fragment is reused within a tick (by every group) and by
        # members lagging a few ticks; older ones only cost memory. When the young
        # generation reaches half the budget, the old one is dropped.
        self._cache: dict[tuple[str, int | None, int], bytes] = {}
        self._cache_old: dict[tuple[str, int | None, int], bytes] = {}
        self._cache_bytes = 0
        self._drained = 0
        self._writing: set[Subscriber] = set()
        #: states of the topics the last tick sent (each once), for latency metrics
        self.tick_states: dict[str, TopicState] = {}

    # -- connections ---------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def groups(self) -> int:
        return len(self._groups)

    def connect(self, grants: Iterable[str] | None = None) -> Subscriber:
        sub = Subscriber(next(self._ids), None if grants is None else tuple(grants))
        self._subscribers[sub.id] = sub
        return sub

    def disconnect(self, sub: Subscriber) -> None:
        if sub.closed:
            return
        sub.closed = True
        for s in sub.subs.values():
            self._drop_members(s.members)
        sub.subs.clear()
        self._writing.discard(sub)
        self._subscribers.pop(sub.id, None)

    # -- client requests -----------------------------------------------------------

    def subscribe(self, sub: Subscriber, msg: Subscribe) -> Ack | Error:
        cfg = self.config
        if msg.id in sub.subs:
            return Error("duplicate_subscription", f"subscription {msg.id!r} exists", msg.id)
        if len(sub.subs) >= cfg.max_subscriptions:
            return Error(
                "too_many_subscriptions",
                f"at most {cfg.max_subscriptions} subscriptions per connection",
                msg.id,
            )
        keys: list[GroupKey] = []
        restricted = False
        every = self._every(msg.rate_hz)
        for f in msg.filters:
            grants = self._grants_for(sub.grants, f)
            if grants == ():
                return Error("forbidden", f"filter {f!r} is outside this identity's grants", msg.id)
            restricted |= grants is not None
            keys.append(GroupKey(f, every, grants))
        members = [Member(sub, msg.id, self._group(k)) for k in keys]
        for m in members:
            m.group.members.add(m)
        rate = cfg.tick_hz / every
        sub.subs[msg.id] = Subscription(msg.id, msg.filters, rate, members)
        sub.ready = True
        return Ack("subscribe", msg.id, msg.filters, rate, restricted=restricted or None)

    def unsubscribe(self, sub: Subscriber, msg: Unsubscribe) -> Ack | Error:
        s = sub.subs.pop(msg.id, None)
        if s is None:
            return Error("unknown_subscription", f"no subscription {msg.id!r}", msg.id)
        self._drop_members(s.members)
        return Ack("unsubscribe", msg.id, s.filters)

    def resume(self, sub: Subscriber, msg: Resume) -> Ack:
        """Positions of the current epoch become bases; another epoch's get snapshots."""
        same = msg.epoch == self.store.epoch
        if same:
            room = self.config.max_positions - len(sub.positions)
            if len(msg.topics) > room:
                sub.positions.clear()  # bounded: the oldest positions yield snapshots
            # seq 0 holds nothing: that topic's answer is a snapshot, not a delta from 0
            sub.positions.update((t, seq) for t, seq in msg.topics.items() if seq)
        joined = [m for s in sub.subs.values() for m in s.members if m.joined]
        if joined:
            for topic, seq in msg.topics.items():
                if any(_carries(m.group, topic) for m in joined):
                    sub.resync[topic] = seq if same and seq else None
            sub.ready = sub.ready or bool(sub.resync)
        return Ack("resume", resumed=same)

    # -- fan-out -------------------------------------------------------------------

    def _every(self, rate_hz: float | None) -> int:
        cfg = self.config
        rate = cfg.default_rate_hz if rate_hz is None else rate_hz
        return max(1, round(cfg.tick_hz / rate))

    @staticmethod
    def _grants_for(grants: tuple[str, ...] | None, f: str) -> tuple[str, ...] | None:
        """None: ``f`` lies inside the grants; () : disjoint; else the grants to check."""
        if grants is None or any(filter_covers(g, f) for g in grants):
            return None
        overlapping = tuple(g for g in grants if filters_overlap(g, f))
        return overlapping

    def _group(self, key: GroupKey) -> Group:
        group = self._groups.get(key)
        if group is None:
            sent = {
                st.topic: st.seq
                for st in self.store.states()
                if st.seq and matches(key.filter, st.topic)
            }
            group = Group(key, sent, self.config.ring_ticks)
            group.gseq = self.store.changes
            if key.grants is not None:
                group.sent = {t: s for t, s in sent.items() if group.allows(t)}
            group.next_tick = self._tick_count
            self._groups[key] = group
            self._index.add(key.filter, group)
        return group

    def _drop_members(self, members: Iterable[Member]) -> None:
        for m in members:
            group = m.group
            group.members.discard(m)
            if not group.members:
                del self._groups[group.key]
                self._index.remove(group.key.filter, group)

    @property
    def idle(self) -> bool:
        """True when a tick would do nothing: no changes waiting anywhere."""
        return not self.store.has_changes and not any(g.pending for g in self._groups.values())

    def tick(self, now: float) -> list[Subscriber]:
        """One hub tick: returns the subscribers that have frames to take."""
        n = self._tick_count = self._tick_count + 1
        store = self.store
        self.tick_states = {}
        drained = self._drained = store.changes
        for topic in store.drain_changed():
            for group in self._index.match(topic):
                if group.key.grants is None or group.allows(topic):
                    group.pending[topic] = None
        woken: list[Subscriber] = []
        for group in self._groups.values():
            if not group.pending or n < group.next_tick:
                continue
            group.next_tick = n + group.key.every
            self._tick_group(group, now)
            group.gseq = drained
            for m in group.members:
                sub = m.sub
                if not sub.ready:
                    sub.ready = True
                    woken.append(sub)
        # subscribers with a join or resync waiting are already marked ready by
        # subscribe()/resume(); the shell wakes them when it handles the request
        return woken

    def _tick_group(self, group: Group, now: float) -> None:
        store = self.store
        sent = group.sent
        items: list[tuple[str, int | None]] = []
        frags: list[bytes] = []
        for topic in group.pending:
            st = store.get(topic)
            if st is None:
                continue
            base = sent.get(topic)
            if base == st.seq:
                continue
            frag = self.fragment(topic, base, st.seq)
            if frag is None:
                continue
            items.append((topic, base))
            frags.append(frag)
            sent[topic] = st.seq
            self.tick_states[topic] = st
        group.pending.clear()
        if not items:
            return
        group.tick_no += 1
        group.ring.append(TickRecord(group.tick_no, now, tuple(items), self._pack(frags)))

    def fragment(self, topic: str, base: int | None, seq: int) -> bytes | None:
        """Encoded snapshot/delta from ``base`` to the current ``seq`` (cached)."""
        key = (topic, base, seq)
        frag = self._cache.get(key)
        if frag is not None:
            return frag
        frag = self._cache_old.get(key)
        if frag is None:
            item = self.store.diff(topic, base)
            if item is None:
                return None
            # orjson (3.12+) hands back its output in a buffer of at least 4 KiB and
            # never shrinks it: a 150-byte delta kept in the cache would hold 4 KiB.
            # A copy is right-sized (measured: 4,097 -> 84 bytes of heap per fragment).
            frag = bytes(memoryview(encode_state(item)))
        if self._cache_bytes > self.config.cache_bytes // 2:
            self._cache_old = self._cache
            self._cache = {}
            self._cache_bytes = 0
        self._cache[key] = frag
        self._cache_bytes += len(frag) + 200  # with the key and the dict's slot
        return frag

    def _resync_fragment(self, topic: str, base: int | None) -> bytes | None:
        """A resync's answer: a delta from ``base``, or a snapshot marked ``resync``
        that the client applies whatever it holds (it may hold nothing, or be ahead of
        us by its own bug). Not cached: it is one client's."""
        item = self.store.diff(topic, base)
        if type(item) is Snapshot:
            return encode_state(replace(item, reason="resync"))
        return None if item is None else self.fragment(topic, base, item.seq)

    def _pack(self, frags: list[bytes]) -> tuple[bytes, ...]:
        """Batch fragments into frames of at most ``max_frame_bytes`` (unless one
        fragment alone is larger: it still goes, alone)."""
        limit = self.config.max_frame_bytes
        frames: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for frag in frags:
            if chunk and size + len(frag) + batch_overhead(len(chunk) + 1) > limit:
                frames.append(encode_batch(chunk))
                chunk, size = [], 0
            chunk.append(frag)
            size += len(frag)
        if chunk:
            frames.append(encode_batch(chunk))
        return tuple(frames)

    def sent_upto(self, sub: Subscriber) -> int:
        """The store change count up to which ``sub`` has been handed every change of
        its subscriptions (after :meth:`take`): an SSE stream's resume point."""
        return min(
            (m.group.gseq for s in sub.subs.values() for m in s.members),
            default=self.store.changes,
        )

    def take(self, sub: Subscriber, now: float) -> Sequence[bytes]:
        """The frames ``sub`` should write now; advances its cursors."""
        sub.ready = False
        if sub.closed:
            return ()
        if len(sub.subs) == 1 and not sub.resync:
            # fast path, the steady state of a big screen: one subscription with one
            # filter, one tick behind its group: hand out that tick's shared frames
            (s,) = sub.subs.values()
            if len(s.members) == 1:
                m = s.members[0]
                group = m.group
                if m.joined and m.cursor == group.tick_no - 1:
                    m.cursor = group.tick_no
                    frames = group.ring[-1].frames
                    self.stats.shared_frames += len(frames)
                    return frames
        personal: dict[str, int | None] = {}
        shared: list[bytes] = []
        store = self.store
        stats = self.stats
        joined_now = False
        for s in sub.subs.values():
            for m in s.members:
                group = m.group
                if not m.joined:
                    positions = sub.positions
                    for topic in group.sent:
                        _merge_base(personal, topic, positions.get(topic))
                    m.joined = joined_now = True
                    m.cursor = group.tick_no
                    continue
                missed = group.missed(m.cursor)
                if missed is None:
                    stats.lag_snapshots += 1
                    for topic in group.sent:
                        _merge_base(personal, topic, None)
                elif len(missed) == 1:
                    shared.extend(missed[0].frames)
                    stats.shared_frames += len(missed[0].frames)
                elif missed:
                    first: dict[str, int | None] = {}
                    total = 0
                    for rec in missed:
                        total += len(rec.items)
                        for topic, base in rec.items:
                            if topic not in first:
                                first[topic] = base
                    stats.coalesced += total - len(first)
                    for topic, base in first.items():
                        _merge_base(personal, topic, base)
                m.cursor = group.tick_no
        if joined_now:
            sub.positions.clear()  # resume positions serve the joins that follow them
        resynced = sub.resync
        if resynced:
            sub.resync = {}
            for topic, base in resynced.items():
                _merge_base(personal, topic, base)
        frags: list[bytes] = []
        for topic, base in personal.items():
            st = store.get(topic)
            if st is None:
                continue
            if topic in resynced:
                frag = self._resync_fragment(topic, base)
            else:
                frag = self.fragment(topic, base, st.seq)
            if frag is not None:
                frags.append(frag)
        stats.personal_fragments += len(frags)
        # personal frames first: they may carry snapshots the shared deltas build on
        return (*self._pack(frags), *shared) if frags else shared

    # -- the slow-subscriber policy ------------------------------------------------------

    def write_begun(self, sub: Subscriber, now: float) -> None:
        sub.write_started = now
        self._writing.add(sub)

    def write_done(self, sub: Subscriber, now: float) -> None:
        sub.write_started = None
        self._writing.discard(sub)

    def find_slow(
        self, now: float, ages: list[float] | None = None
    ) -> list[tuple[Subscriber, str]]:
        """Subscribers to disconnect (close 4008), with the reason; counted here.

        ``ages``, if given, receives for every member with data waiting how long the
        oldest of it has waited (for the data-age metric).
        """
        cfg = self.config
        slow: dict[Subscriber, str] = {}
        for sub in self._writing:
            if sub.write_started is not None and now - sub.write_started > cfg.stall_s:
                slow[sub] = "stalled"
        for group in self._groups.values():
            if group.tick_no == 0:
                continue
            for m in group.members:
                if m.sub in slow or not m.joined:
                    continue
                since = group.waiting_since(m.cursor)
                if since is None:
                    continue
                if ages is not None:
                    ages.append(now - since)
                if now - since > cfg.max_lag_s:
                    slow[m.sub] = "lagging"
        for reason in slow.values():
            self.stats.slow_disconnect(reason)
        return list(slow.items())


def _carries(group: Group, topic: str) -> bool:
    return matches(group.key.filter, topic) and group.allows(topic)


def _merge_base(out: dict[str, int | None], topic: str, base: int | None) -> None:
    """Keep the lowest base a topic needs (None, a snapshot, is lowest of all)."""
    if topic in out:
        have = out[topic]
        if have is None or base is None:
            out[topic] = None
        else:
            out[topic] = min(have, base)
    else:
        out[topic] = base
