"""The hub: subscriptions, per-tick fan-out decisions and the encode-once cache.

The shell (gateway/serve) drives it with plain calls and numbers:

* ``tick_steps(now)`` at ``tick_hz``: finishes building new groups, moves the
  store's changed topics into the groups that carry them, lets each due group tick
  (encoding its frames once), builds the join snapshots screens wait for, and yields
  the subscribers that now have something to send. It does at most
  ``slice_items`` units of work between two yields (the shell checkpoints there),
  and, given a ``clock``, at most ``slice_seconds`` of it (units differ in cost: a
  routed topic is cheap, a fragment of many fields is not), so no amount of
  changes, topics or joins holds the event loop for long.
  ``tick(now)`` runs all the steps at once (tests, tools). It never waits on a
  subscriber: waking writers is the shell's job.
* ``take(sub, now)`` from the subscriber's own writer: the frames to write now,
  built from the member cursors (see outbox.py for the policy).
* ``write_begun``/``write_done`` around each write, and ``find_slow(now)`` about
  once a second, which names the subscribers to close with 4008.

``now`` here is the shell's monotonic clock in seconds; the store's times are wall
clock. Nothing in this module reads either; the optional ``clock`` the shell hands
the hub only bounds the length of a tick's slices, never what they decide.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from .alarms import with_alarm_grants
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
    encode_topic,
)
from .rates import RateError, RateSteps
from .state import Snapshot, StateStore, TopicState
from .topics import SubscriptionIndex, filter_covers, filters_overlap, matches

__all__ = ["Hub", "HubConfig", "Subscriber", "Subscription"]

#: topics routed, and join snapshot fragments encoded, between two looks at the slice's
#: bounds (a snapshot fragment of many fields costs tens of microseconds)
ROUTE_STEP = 256
SNAPSHOT_STEP = 64
FRAGMENT_STEP = 64  # topics of a group's tick, most of them encoded afresh
#: a join snapshot of up to this many topics is built when a screen takes it (its
#: subscribe or its pump); a larger one by the next tick, in slices
INLINE_JOIN_TOPICS = 128


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
    min_rate_hz: float = 0.1  # slowest rate a subscription may ask for (rates.py)
    max_filters_per_connection: int = 256  # filters over all of a connection's subscriptions
    #: distinct streams ((filter, rate step, grants) groups) one connection may join
    max_groups_per_connection: int = 64
    #: units of work (topics routed, fragments encoded, group entries built) the hub
    #: does between two yields of tick_steps(), and at most in one subscribe()
    slice_items: int = 1000
    #: and the time it spends between two yields, if the hub has a clock: a slice
    #: ends at whichever bound comes first (the loop-lag budget is p99 <= 10 ms with
    #: the MQTT reader, the pumps and the sessions each taking their turn)
    slice_seconds: float = 0.001

    def __post_init__(self) -> None:
        for name in (
            "tick_hz", "default_rate_hz", "stall_s", "max_lag_s", "min_rate_hz", "slice_seconds"
        ):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.default_rate_hz > self.tick_hz:
            raise ValueError("default_rate_hz must not exceed tick_hz")
        if not self.min_rate_hz <= self.default_rate_hz:
            raise ValueError("min_rate_hz must not exceed default_rate_hz")
        if self.ring_ticks < 2 or self.max_subscriptions < 1 or self.max_frame_bytes < 1024:
            raise ValueError("ring_ticks >= 2, max_subscriptions >= 1, max_frame_bytes >= 1024")
        if min(self.max_filters_per_connection, self.max_groups_per_connection) < 1:
            raise ValueError("max_filters_per_connection and max_groups_per_connection >= 1")
        if self.slice_items < 1:
            raise ValueError("slice_items must be >= 1")


class _Slice:
    """Work done since the last yield of a sliced tick, and whom it woke. Full at
    ``budget`` units of work or, with a clock, once ``seconds`` have passed."""

    __slots__ = ("budget", "clock", "seconds", "until", "woken", "work")

    def __init__(
        self, budget: int, clock: Callable[[], float] | None = None, seconds: float = 0.0
    ) -> None:
        self.budget = budget
        self.clock = clock
        self.seconds = seconds
        self.until = clock() + seconds if clock is not None else 0.0
        self.work = 0
        self.woken: list[Subscriber] = []

    @property
    def full(self) -> bool:
        if self.work >= self.budget:
            return True
        clock = self.clock
        return clock is not None and clock() >= self.until

    def take(self) -> list[Subscriber]:
        woken, self.woken, self.work = self.woken, [], 0
        if self.clock is not None:
            self.until = self.clock() + self.seconds
        return woken

    def wake(self, group: Group) -> None:
        self.work += len(group.members)
        for m in group.members:
            sub = m.sub
            if not sub.ready:
                sub.ready = True
                self.woken.append(sub)


class _Packer:
    """Fragments batched into frames of at most ``limit`` bytes as they are added
    (one fragment larger than that still goes, alone in its frame)."""

    __slots__ = ("chunk", "frames", "limit", "size")

    def __init__(self, limit: int) -> None:
        # a batch of n >= 2 fragments adds its head, its tail and n - 1 commas
        self.limit = limit - batch_overhead(2) + 1
        self.frames: list[bytes] = []
        self.chunk: list[bytes] = []
        self.size = 0

    def add(self, frags: list[bytes]) -> None:
        chunk, size, limit = self.chunk, self.size, self.limit
        for frag in frags:
            n = len(frag)
            if chunk and size + n + len(chunk) > limit:
                self.frames.append(encode_batch(chunk))
                chunk, size = [], 0
            chunk.append(frag)
            size += n
        self.chunk, self.size = chunk, size

    def done(self) -> tuple[bytes, ...]:
        if self.chunk:
            self.frames.append(encode_batch(self.chunk))
            self.chunk, self.size = [], 0
        return tuple(self.frames)


class Hub:
    def __init__(
        self,
        store: StateStore,
        config: HubConfig | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.config = config or HubConfig()
        #: bounds the time of a tick's slices (the shell's clock); without it, slices
        #: are bounded in units of work only (tests, tools: deterministic)
        self.clock = clock
        self.rates = RateSteps(self.config.tick_hz, self.config.min_rate_hz)
        self.stats = OutboxStats()
        #: called when work waits that only a tick does (a group or a join snapshot to
        #: build): the shell wakes its tick loop, which sleeps while the hub is idle
        self.on_work: Callable[[], None] | None = None
        self._building: dict[Group, None] = {}  # groups whose ``sent`` is incomplete
        #: building work subscribes may still do at once until the next tick, shared by
        #: all: 32 subscribes read in one step, each with its own 1,000 topics of it,
        #: held the loop 22 ms (hub_stalls_bench); the rest is built in the tick's slices
        self._build_now = self.config.slice_items
        self._join_wanted: dict[Group, None] = {}  # groups screens wait to join
        self._ticking = False
        self._groups: dict[GroupKey, Group] = {}
        #: every -> members of the groups of that period, per phase (the tick numbers
        #: modulo ``every`` they tick on): a group ticking at 10 Hz on a 20 Hz hub
        #: ticks every other tick, and the hub puts the groups' members half on the
        #: even, half on the odd ticks. All on the same ticks, 4,000 screens had their
        #: frames written in one 54 ms tick every 100 ms, with the next tick empty:
        #: the last screens of each tick got their data ~50 ms later than the first.
        self._phase_load: dict[int, list[int]] = {}
        #: ticks on time still to come before the phases apply again: set to a second
        #: of ticks by a late tick (tick numbers skipped, not after a quiet spell, in
        #: which the shell does not tick: ``after_quiet``). While the loop is behind,
        #: waiting for a phase only loses frames (3 to 5 % with ticks 50 to 300 ms
        #: apart), so the groups go on as the ticks allow
        self._behind = 0
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
        #: the frames of the large join snapshots this tick built so far (the shell
        #: compresses them frame by frame between slices, before screens take them)
        self.tick_joins: list[tuple[bytes, ...]] = []
        #: the groups' tick frames this tick built so far (the shell may compress them
        #: between slices too: a screen's pump then finds them compressed)
        self.tick_frames: list[bytes] = []
        #: how many of the frames the last :meth:`take` returned were built for that
        #: subscriber alone (they come first); the others are shared
        self.personal = 0

    # -- connections ---------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def groups(self) -> int:
        return len(self._groups)

    def connect(self, grants: Iterable[str] | None = None) -> Subscriber:
        # a grant to a topic is a grant to its alarms ($alarms/<rule>/<topic>)
        sub = Subscriber(next(self._ids), with_alarm_grants(grants))
        self._subscribers[sub.id] = sub
        return sub

    def disconnect(self, sub: Subscriber) -> None:
        if sub.closed:
            return
        sub.closed = True
        sub.solo = None
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
        try:
            rate = self.rates.snap(cfg.default_rate_hz if msg.rate_hz is None else msg.rate_hz)
        except RateError as err:
            return Error("bad_rate", str(err), msg.id)
        held = [m.group.key for s in sub.subs.values() for m in s.members]
        if len(held) + len(msg.filters) > cfg.max_filters_per_connection:
            return Error(
                "too_many_filters",
                f"at most {cfg.max_filters_per_connection} filters per connection",
                msg.id,
            )
        keys: list[GroupKey] = []
        restricted = False
        every = self.rates.every(rate)
        for f in msg.filters:
            grants = self._grants_for(sub.grants, f)
            if grants == ():
                return Error("forbidden", f"filter {f!r} is outside this identity's grants", msg.id)
            restricted |= grants is not None
            keys.append(GroupKey(f, every, grants))
        if len({*held, *keys}) > cfg.max_groups_per_connection:
            return Error(
                "too_many_groups",
                f"at most {cfg.max_groups_per_connection} distinct (filter, rate) streams "
                "per connection",
                msg.id,
            )
        members = []
        for k in keys:  # each counted at once: the next new group sees its phase taken
            m = Member(sub, msg.id, self._group(k))
            m.group.members.add(m)
            self._phase_load[k.every][m.group.phase] += 1
            members.append(m)
        sub.subs[msg.id] = Subscription(msg.id, msg.filters, rate, members)
        sub.solo = None  # take() finds the one member again, if there is one
        sub.ready = True
        return Ack("subscribe", msg.id, msg.filters, rate, restricted=restricted or None)

    def unsubscribe(self, sub: Subscriber, msg: Unsubscribe) -> Ack | Error:
        s = sub.subs.pop(msg.id, None)
        if s is None:
            return Error("unknown_subscription", f"no subscription {msg.id!r}", msg.id)
        sub.solo = None
        self._drop_members(s.members)
        return Ack("unsubscribe", msg.id, s.filters)

    def resume(self, sub: Subscriber, msg: Resume) -> Ack:
        """Positions of the current epoch become bases; another epoch's get snapshots."""
        same = msg.epoch == self.store.epoch
        if same:
            # only topics the store holds, keyed by its own string: positions of topics
            # that do not exist serve no join, and a connection naming 250 x 1,000 made-up
            # topics held 16 MB (found by an outside check); seq 0 holds nothing (its
            # answer is a snapshot, not a delta from 0)
            get = self.store.get
            held = {
                st.topic: seq for t, seq in msg.topics.items() if seq and (st := get(t)) is not None
            }
            if len(held) > self.config.max_positions - len(sub.positions):
                sub.positions.clear()  # bounded: the oldest positions yield snapshots
            sub.positions.update(held)
        joined = [m for s in sub.subs.values() for m in s.members if m.joined]
        if joined:
            for topic, seq in msg.topics.items():
                if any(_carries(m.group, topic) for m in joined):
                    sub.resync[topic] = seq if same and seq else None
            sub.ready = sub.ready or bool(sub.resync)
        return Ack("resume", resumed=same)

    # -- fan-out -------------------------------------------------------------------

    def outside_grants(self, grants: Iterable[str] | None, filters: Iterable[str]) -> str | None:
        """The first of ``filters`` that an identity with ``grants`` may not subscribe
        to (``subscribe`` refuses it as ``forbidden``), or None."""
        held = with_alarm_grants(grants)  # as connect() gives them to its subscriber
        return next((f for f in filters if self._grants_for(held, f) == ()), None)

    @staticmethod
    def _grants_for(grants: tuple[str, ...] | None, f: str) -> tuple[str, ...] | None:
        """None: ``f`` lies inside the grants; () : disjoint; else the grants to check."""
        if grants is None or any(filter_covers(g, f) for g in grants):
            return None
        overlapping = tuple(g for g in grants if filters_overlap(g, f))
        return overlapping

    def _group(self, key: GroupKey) -> Group:
        """The group of ``key``, created if new. A new group's ``sent`` map comes from
        the store's topic tree (only the matching topics are visited), as much as
        ``_build_now`` allows at once and the rest in the next ticks' slices; members
        join once it is complete."""
        group = self._groups.get(key)
        if group is None:
            group = Group(key, {}, self.config.ring_ticks)
            # every change up to here is in ``sent`` once built (built from the
            # current seqs), every later one reaches ``pending`` through the index
            group.gseq = self.store.changes
            group.building = self.store.tree.matching(key.filter)
            group.next_tick = self._tick_count  # its first tick may come at once
            group.phase = self._lightest_phase(key.every)
            self._groups[key] = group
            self._index.add(key.filter, group)
            if self._build_now > 0:
                self._build_now -= self._build_some(group, self._build_now)
            if group.building is not None:
                self._building[group] = None
                self._signal()
        return group

    def _lightest_phase(self, every: int) -> int:
        """The phase with the fewest members among the groups of period ``every``;
        of equal ones, the one whose next tick comes first."""
        load = self._phase_load.get(every)
        if load is None:
            load = self._phase_load[every] = [0] * every
        soonest = self._tick_count + 1
        return min(range(every), key=lambda p: (load[p], (p - soonest) % every))

    def _next_tick(self, group: Group, n: int, due: int | None) -> int:
        """The tick after ``group`` ticked at tick ``n``: ``due`` if it ticked on
        time and ``due`` is on its phase (a group made during a tick may tick in it,
        off its phase), else the first tick on its phase a period after ``n``.
        First the group moves to the lightest phase if that evens the load: only if
        its members are fewer than the difference, so that it never moves back at
        once. A move or a quiet spell lengthens one interval by less than a period.
        While the loop is behind (``_behind``), no move and no wait for a phase: the
        group ticks on its grid (``due``) or a period after ``n``, as before phases,
        and goes back to its phase once the ticks are on time again. Over time a
        stream gets its rate, never more."""
        every = group.key.every
        at = n + every
        if self._behind:
            return due if due is not None else at
        if every > 1:
            load = self._phase_load[every]
            light = min(range(every), key=load.__getitem__)
            here = len(group.members)
            if here < load[group.phase] - load[light]:
                load[group.phase] -= here
                load[light] += here
                group.phase = light
                due = None
        if due is not None and (due - group.phase) % every == 0:
            return due
        return at + (group.phase - at) % every

    def _build_some(self, group: Group, limit: int) -> int:
        """Add up to ``limit`` topics to a building group's ``sent``; returns how many
        topics it looked at. Clears ``group.building`` when the walk is done."""
        walk = group.building
        if walk is None:
            return 0
        store_get = self.store.get
        sent = group.sent
        restricted = group.key.grants is not None
        count = 0
        for topic in walk:
            count += 1
            st = store_get(topic)
            if st is not None and st.seq and (not restricted or group.allows(topic)):
                sent[topic] = st.seq
            if count >= limit:
                return count
        group.building = None
        self._building.pop(group, None)
        return count

    def _signal(self) -> None:
        if self.on_work is not None:
            self.on_work()

    def _drop_members(self, members: Iterable[Member]) -> None:
        for m in members:
            group = m.group
            if m in group.members:
                group.members.discard(m)
                self._phase_load[group.key.every][group.phase] -= 1
            if not group.members:
                del self._groups[group.key]
                self._index.remove(group.key.filter, group)
                self._building.pop(group, None)
                self._join_wanted.pop(group, None)
                group.building = None
                group.join = None

    @property
    def idle(self) -> bool:
        """True when a tick would do nothing: no changes or builds waiting anywhere."""
        return (
            not self.store.has_changes
            and not self._building
            and not self._join_wanted
            and not any(g.pending for g in self._groups.values())
        )

    def tick(self, now: float, *, after_quiet: bool = False) -> list[Subscriber]:
        """One whole hub tick: returns the subscribers that have frames to take."""
        woken: list[Subscriber] = []
        for batch in self.tick_steps(now, after_quiet=after_quiet):
            woken += batch
        return woken

    def tick_steps(self, now: float, *, after_quiet: bool = False) -> Iterator[list[Subscriber]]:
        """One hub tick in slices of at most ``slice_items`` units of work; yields,
        after each slice, the subscribers woken by it (the shell pumps them and
        checkpoints before it resumes the tick). ``after_quiet``: the shell did not
        tick for a while because the hub was idle (tick numbers it skipped are a
        quiet spell, not a loop that is behind).

        Between two slices the hub is consistent: subscribers may subscribe, take,
        resume and leave. A joining member sees ``sent`` entries a suspended group
        tick has updated already; that is safe because join snapshots carry the
        current state, which is never older than ``sent`` (a client ignores a delta
        whose seq it holds already, and accepts one whose base it has passed).
        """
        if self._ticking:
            raise RuntimeError("a hub tick is still in progress")
        self._ticking = True
        try:
            cfg = self.config
            yield from self._tick_slices(
                now, _Slice(cfg.slice_items, self.clock, cfg.slice_seconds), after_quiet
            )
        finally:
            self._ticking = False

    def _tick_slices(self, now: float, sl: _Slice, after_quiet: bool) -> Iterator[list[Subscriber]]:
        # The tick number follows the time (ticks of 1 / tick_hz since 0), at least one
        # more each tick: a tick that starts late (a busy loop, an overloaded core)
        # counts the intervals it missed, so a stream due within them goes out now.
        # Counted per tick, every stream slowed down with the ticks: with a tick every
        # 60 ms at 20 Hz, a 10 Hz stream got 6.8 frames a second (tests/core/test_hub.py).
        prev = self._tick_count
        n = self._tick_count = max(prev + 1, math.floor(now * self.rates.tick_hz + 1e-6))
        if n > prev + 1 and prev and not after_quiet:  # late (not the first tick)
            self._behind = math.ceil(self.rates.tick_hz)
        elif self._behind:
            self._behind -= 1
        store = self.store
        self._build_now = self.config.slice_items
        self.tick_states = {}
        self.tick_joins = []
        self.tick_frames = []
        # 1. new groups' sent maps (their members join when complete)
        for group in list(self._building):
            while group.building is not None:
                sl.work += self._build_some(group, max(1, min(ROUTE_STEP, sl.budget - sl.work)))
                if group.building is None:
                    # its members join from the snapshot phase 4 builds (which wakes
                    # them, those with resume positions included)
                    self._join_wanted[group] = None
                if sl.full:
                    yield sl.take()
        # 2. route the changed topics to the groups that carry them
        drained = self._drained = store.changes
        changed = store.drain_changed()
        match = self._index.match
        step = min(sl.budget, ROUTE_STEP)
        for i in range(0, len(changed), step):
            for topic in changed[i : i + step]:
                for group in match(topic):
                    if group.key.grants is None or group.allows(topic):
                        group.pending[topic] = None
            sl.work += min(step, len(changed) - i)
            if sl.full:
                yield sl.take()
        # 3. the due groups tick
        for group in list(self._groups.values()):
            if not group.pending or n < group.next_tick or group.building is not None:
                continue
            if self._groups.get(group.key) is not group:
                continue  # dropped during an earlier slice
            # A group that ticks at its first chance (no earlier tick reached its due
            # number) stays on its grid: a late tick must not shift the next one, or
            # the stream loses rate. Later (it had nothing to send, it was being
            # built, it fell a period behind), the next one is the first tick on its
            # phase a period from now (_next_tick: the phases spread the groups).
            due = group.next_tick + group.key.every
            on_time = prev < group.next_tick and due > n
            group.next_tick = self._next_tick(group, n, due if on_time else None)
            yield from self._tick_group(group, now, sl)
            group.gseq = drained
            sl.wake(group)
            if sl.full:
                yield sl.take()
        # 4. join snapshots for the screens waiting on them (after the ticks: a join
        # snapshot is built at its group's current tick)
        for group in list(self._join_wanted):
            yield from self._build_join(group, sl)
        yield sl.take()

    def _tick_group(self, group: Group, now: float, sl: _Slice) -> Iterator[list[Subscriber]]:
        store = self.store
        sent = group.sent
        items: list[tuple[str, int | None]] = []
        frags: list[bytes] = []
        topics = list(group.pending)
        group.pending.clear()
        get = store.get
        states = self.tick_states
        pos = 0
        while pos < len(topics):
            # at most the slice's room between two checks (one unit per topic), and
            # FRAGMENT_STEP topics between two looks at its clock
            if sl.full:
                yield sl.take()
            room = min(sl.budget - sl.work, FRAGMENT_STEP)
            chunk = topics[pos : pos + room]
            pos += room
            sl.work += len(chunk)
            for topic in chunk:
                st = get(topic)
                if st is None:
                    continue
                seq = st.seq
                base = sent.get(topic)
                if base == seq:
                    continue
                key = (topic, base, seq)
                frag = self._cache.get(key) or self._encode(key, st, base)
                if frag is None:
                    continue
                items.append((topic, base))
                frags.append(frag)
                sent[topic] = seq
                states[topic] = st
        if not items:
            return
        no = group.tick_no = group.tick_no + 1
        frames = self._pack(frags)
        group.ring.append(TickRecord(no, now, tuple(items), frames, _repeats(group, items, no)))
        self.tick_frames += frames
        if group.join is not None:
            # a join snapshot serves later joiners with the ticks since (see
            # _join_frames) while those are in the ring and small next to it
            since = group.missed(group.join[0])
            if since is None or 2 * sum(len(rec.items) for rec in since) > len(sent):
                group.join = None

    def _coalesce_limit(self, group: Group) -> int:
        """Missed items above which a lagging member rejoins from a snapshot instead
        of getting personal coalesced deltas: half the group's topics (the snapshot
        is then at most about twice the bytes), and never more than 4 slices."""
        return min(4 * self.config.slice_items, max(64, len(group.sent) // 2))

    def _join_frames(self, group: Group) -> tuple[bytes, ...] | None:
        """The group's shared join snapshot, built now if small; None (and a build
        requested from the next tick) if large.

        A snapshot built at an earlier tick still serves, followed by the frames of
        the ticks since (all shared, already compressed), while those carry at most
        half as many items as the group has topics (``_tick_group`` drops it then):
        in a join wave the large snapshot is built every few ticks, not every tick.
        That is exact: the snapshot is never older than ``sent`` at its tick, and a
        client ignores a delta it holds already (state.py, invariant 3)."""
        join = group.join
        if join is not None:
            self.stats.joins_shared += 1
            if join[0] == group.tick_no:
                return join[1]
            missed = group.missed(join[0])
            assert missed is not None  # _tick_group keeps a join only within the ring
            return (*join[1], *(f for rec in missed for f in rec.frames))
        if len(group.sent) > min(self.config.slice_items, INLINE_JOIN_TOPICS):
            if group not in self._join_wanted:
                self._join_wanted[group] = None
                self._signal()
            return None
        frames = self._pack(self._snapshot_frags(group, list(group.sent)))
        group.join = (group.tick_no, frames)
        self.stats.join_snapshots += 1
        self.stats.joins_shared += 1
        return frames

    def _snapshot_frags(self, group: Group, topics: list[str]) -> list[bytes]:
        store_get = self.store.get
        frags: list[bytes] = []
        for topic in topics:
            st = store_get(topic)
            if st is not None:
                frag = self.fragment(topic, None, st.seq)
                if frag is not None:
                    frags.append(frag)
        return frags

    def _build_join(self, group: Group, sl: _Slice) -> Iterator[list[Subscriber]]:
        """Build a large join snapshot slice by slice. No group ticks meanwhile (this
        is the tick's last phase), so it is valid for the group's current tick; the
        fragments hold the current state, never older than ``sent``."""
        topics = list(group.sent)
        # packed as the fragments come: packing 20,000 of them at the end took one
        # step of ~15 ms (hub_stalls_bench, 32 subscribes to '#')
        packer = _Packer(self.config.max_frame_bytes)
        step = min(sl.budget, SNAPSHOT_STEP)
        for i in range(0, len(topics), step):
            if sl.full:
                yield sl.take()
                if self._groups.get(group.key) is not group:
                    return  # dropped meanwhile
            part = topics[i : i + step]
            packer.add(self._snapshot_frags(group, part))
            sl.work += len(part)
        if group in self._join_wanted:
            del self._join_wanted[group]
            group.join = (group.tick_no, packer.done())
            self.tick_joins.append(group.join[1])
            self.stats.join_snapshots += 1
            for m in group.members:
                if not m.joined and not m.sub.ready:
                    m.sub.ready = True
                    sl.woken.append(m.sub)
            sl.work += len(group.members)

    def fragment(self, topic: str, base: int | None, seq: int) -> bytes | None:
        """Encoded snapshot/delta from ``base`` to the current ``seq`` (cached)."""
        key = (topic, base, seq)
        frag = self._cache.get(key)
        if frag is not None:
            return frag
        st = self.store.get(topic)
        if st is None:
            return None
        return self._encode(key, st, base)

    def _encode(
        self, key: tuple[str, int | None, int], st: TopicState, base: int | None
    ) -> bytes | None:
        """:meth:`fragment` past the young cache: ``key`` is ``(st.topic, base,
        st.seq)``."""
        frag = self._cache_old.get(key)
        if frag is None:
            # the common answers straight from the state; the store decides the rest
            raw = encode_topic(st, base)
            if raw is None:
                item = self.store.diff(st.topic, base)
                if item is None:
                    return None
                raw = encode_state(item)
            # orjson (3.12+) hands back its output in a buffer of at least 4 KiB and
            # never shrinks it: a 150-byte delta kept in the cache would hold 4 KiB.
            # A copy is right-sized (measured: 4,097 -> 84 bytes of heap per fragment).
            frag = bytes(memoryview(raw))
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
        if sum(map(len, frags)) + batch_overhead(len(frags)) <= limit:
            return (encode_batch(frags),) if frags else ()
        packer = _Packer(limit)
        packer.add(frags)
        return packer.done()

    def live_joins(self) -> Iterator[tuple[bytes, ...]]:
        """The frames of every join snapshot screens may still be handed (a group's,
        while it serves: see :meth:`_join_frames`)."""
        for group in self._groups.values():
            if group.join is not None:
                yield group.join[1]

    def sent_upto(self, sub: Subscriber) -> int:
        """The store change count up to which ``sub`` has been handed every change of
        its subscriptions (after :meth:`take`): an SSE stream's resume point."""
        return min(
            (m.group.gseq for s in sub.subs.values() for m in s.members),
            default=self.store.changes,
        )

    def take(self, sub: Subscriber, now: float) -> Sequence[bytes]:
        """The frames ``sub`` should write now; advances its cursors. The first
        :attr:`personal` of them are ``sub``'s alone, the rest shared."""
        sub.ready = False
        self.personal = 0
        if sub.closed:
            return ()
        # fast path, the steady state of a big screen: one subscription with one
        # filter, one tick behind its group: hand out that tick's shared frames
        solo = sub.solo
        if solo is None and len(sub.subs) == 1:
            for s in sub.subs.values():
                if len(s.members) == 1:
                    solo = sub.solo = s.members[0]
        if solo is not None and not sub.resync:
            group = solo.group
            no = group.tick_no
            if solo.cursor == no - 1 and solo.joined:
                solo.cursor = no
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
                if m.joined:
                    missed = group.missed(m.cursor)
                    if missed is not None and len(missed) <= 1:
                        if missed:
                            shared.extend(missed[0].frames)
                            stats.shared_frames += len(missed[0].frames)
                        m.cursor = group.tick_no
                        continue
                    total = 0 if missed is None else sum(len(rec.items) for rec in missed)
                    if (
                        missed is not None
                        and total <= max(64, len(group.sent))
                        and 4 * _folded(missed) <= total
                    ):
                        # the missed ticks barely overlap: their shared frames cost the
                        # screen little more than a coalesced catch-up, and the gateway
                        # nothing (already encoded and compressed); more items than a
                        # snapshot has: the shared join snapshot (below) is smaller
                        for rec in missed:
                            shared.extend(rec.frames)
                            stats.shared_frames += len(rec.frames)
                        stats.caught_up_shared += 1
                        m.cursor = group.tick_no
                        continue
                    if missed is not None and total <= self._coalesce_limit(group):
                        first: dict[str, int | None] = {}
                        for rec in missed:
                            for topic, base in rec.items:
                                if topic not in first:
                                    first[topic] = base
                        stats.coalesced += total - len(first)
                        for topic, base in first.items():
                            _merge_base(personal, topic, base)
                        m.cursor = group.tick_no
                        continue
                    # Out of the ring, or so far behind that coalescing would cost
                    # more than a snapshot: the member joins again, from the group's
                    # shared join snapshot (bounded work per take, whatever the lag).
                    stats.lag_snapshots += 1
                    m.joined = False
                if group.building is not None:
                    continue  # woken when the group's state is complete
                positions = sub.positions
                resumed: dict[str, int | None] | None = None
                if positions:
                    # a topic held at the group's seq needs nothing now: the group's
                    # next tick brings any later change as a delta from that seq
                    resumed = {}
                    limit = self._coalesce_limit(group)
                    for topic, seq in group.sent.items():
                        held = positions.get(topic)
                        if held != seq:
                            resumed[topic] = held
                            if len(resumed) > limit:
                                # most of it changed: the group's shared join snapshot
                                # is at most about twice the bytes, built and compressed
                                # once for all (a 10,000-topic resume with every topic
                                # changed took 15 to 18 ms of one step for each screen)
                                resumed = None
                                break
                if resumed is not None:
                    for topic, held in resumed.items():
                        _merge_base(personal, topic, held)
                else:
                    # no positions: the snapshot every screen joining this group
                    # during this group tick shares (built once, framed once)
                    join = self._join_frames(group)
                    if join is None:
                        continue  # woken when the tick has built it
                    if positions:
                        stats.resume_snapshots += 1
                    shared.extend(join)
                m.joined = joined_now = True
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
        if not frags:
            return shared
        # personal frames first: they may carry snapshots the shared deltas build on
        mine = self._pack(frags)
        self.personal = len(mine)
        return (*mine, *shared)

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
        found: list[tuple[Subscriber, str]] = []
        for batch in self.find_slow_steps(now, ages):
            found += batch
        return found

    def find_slow_steps(
        self, now: float, ages: list[float] | None = None
    ) -> Iterator[list[tuple[Subscriber, str]]]:
        """:meth:`find_slow` in slices of at most ``slice_items`` members and, with a
        clock, ``slice_seconds`` (looked at every 64 members): yields the subscribers
        found in each (the shell checkpoints between slices). Groups and members may
        come and go between slices (a copy of each is walked)."""
        cfg = self.config
        slow: dict[Subscriber, str] = {}
        for sub in self._writing:
            if sub.write_started is not None and now - sub.write_started > cfg.stall_s:
                slow[sub] = "stalled"
        found = list(slow.items())
        sl = _Slice(cfg.slice_items, self.clock, cfg.slice_seconds)
        for group in list(self._groups.values()):
            if group.tick_no == 0:
                continue
            for m in list(group.members):
                sl.work += 1
                if (sl.work >= sl.budget or not sl.work & 63) and sl.full:
                    yield found
                    found = []
                    sl.take()
                if m.sub in slow or not m.joined or m.sub.closed:
                    continue
                since = group.waiting_since(m.cursor)
                if since is None:
                    continue
                if ages is not None:
                    ages.append(now - since)
                if now - since > cfg.max_lag_s:
                    slow[m.sub] = "lagging"
                    found.append((m.sub, "lagging"))
        yield found
        for reason in slow.values():
            self.stats.slow_disconnect(reason)


def _repeats(group: Group, items: list[tuple[str, int | None]], no: int) -> tuple[int, ...]:
    """``TickRecord.repeats`` for tick ``no`` carrying ``items``; records the carry."""
    span = (group.ring.maxlen or 2) - 1
    near = [0] * span
    carried = group.carried
    for topic, _base in items:
        prev = carried.get(topic)
        carried[topic] = no
        if prev is not None and no - prev <= span:
            near[no - prev - 1] += 1
    return tuple(itertools.accumulate(near))


def _folded(missed: Sequence[TickRecord]) -> int:
    """How many items of ``missed`` (consecutive ticks) repeat a topic of an earlier
    one: what coalescing them would fold away."""
    return sum(rec.repeated_within(i) for i, rec in enumerate(missed))


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
