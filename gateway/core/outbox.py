"""Latest-value outboxes: shared group streams and per-subscriber cursors.

A naive outbox keeps, per subscriber, the set of changed topics and the last
``seq`` sent for each topic. That is O(topics) memory per subscriber (10,000 topics
x 1,000 screens = 10 million entries) and O(subscribers) work per changed topic.
Here the same information is kept once per *group* instead:

* A :class:`Group` is one stream: one filter, one rate (in hub ticks), one grant
  set. It knows, for every topic it carries, the ``seq`` as of its last tick
  (``sent``), the topics changed since (``pending``), and a short ring of its last
  ticks: which topics each tick carried and from which base, plus that tick's
  encoded frames.
* A :class:`Member` (one filter of one subscription of one connection) is a
  cursor: the number of the last group tick whose state the client holds *or is
  newer than*. "Topics changed since last written" is "topics in the ring after
  the cursor", and "last seq sent" of such a topic is its base in the first of
  those ticks. Everything else the client holds is current as of the cursor.

The stepped slow-subscriber policy falls out of the cursor's lag (in ticks):

* lag 1: the member gets the tick's frames, the very bytes every other in-sync
  member gets (encode once, send many);
* lag 2 .. ring length, missed ticks that rarely repeat a topic (at most one item
  in four repeats a topic of an earlier missed tick, ``TickRecord.repeats``) and
  carry no more items than the group has topics: the missed ticks' own frames, in
  order. Coalescing them would save little and cost a
  personal encode and deflate, the most expensive thing a gateway does per screen;
  when a busy gateway lets many screens fall a tick or two behind, personal frames
  would multiply its work exactly when it has none to spare;
* lag 2 .. ring length, otherwise: *coalesce*: one personal delta per topic from
  its base in the first missed tick to the current state (counted: updates folded
  away), unless the missed ticks hold more items than ``Hub._coalesce_limit``
  (then, as below: a snapshot is about as large and needs no work per member);
* older than the ring: the member *joins again*, from the group's shared join
  snapshot (counted);
* a write stalled longer than ``stall_s``, or data waiting longer than
  ``max_lag_s``: *disconnect* with close code 4008 (counted by reason).

Clients accept a delta iff ``delta.base <= held seq < delta.seq`` (state.py,
invariant 3), so shared and personal frames compose in any interleaving.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from .topics import matches

__all__ = [
    "Group", "GroupKey", "Member", "OutboxStats", "Subscriber", "Subscription", "TickRecord",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class GroupKey:
    filter: str
    every: int  # the group ticks once every `every` hub ticks
    grants: tuple[str, ...] | None  # None: every matching topic is allowed


@dataclass(frozen=True, slots=True)
class TickRecord:
    no: int
    at: float  # hub time (monotonic seconds) of the tick
    #: (topic, base) per topic the tick carried; base None: the group had no
    #: earlier state of the topic, so the tick carried a snapshot.
    items: tuple[tuple[str, int | None], ...]
    frames: tuple[bytes, ...]
    #: ``repeats[g - 1]``: how many of ``items`` the group carried in one of the ``g``
    #: ticks before this one (g = 1 .. ring length - 1). A member that missed ticks
    #: n+1 .. n+k would get ``sum(rec_i.repeats[i - 1] for i = 2 .. k)`` items that a
    #: coalesced catch-up folds away.
    repeats: tuple[int, ...] = ()

    def repeated_within(self, ticks: int) -> int:
        """Items of this tick the group also carried in one of the ``ticks`` before."""
        if ticks <= 0 or not self.repeats:
            return 0
        return self.repeats[min(ticks, len(self.repeats)) - 1]


@dataclass(slots=True)
class OutboxStats:
    coalesced: int = 0  # topic updates folded into a later one for a lagging member
    lag_snapshots: int = 0  # members so far behind that they got a group snapshot
    #: resumes whose topics had changed too much for deltas: the group's join snapshot
    resume_snapshots: int = 0
    shared_frames: int = 0  # tick frames handed out as-is (encode once, send many)
    personal_fragments: int = 0  # fragments built for one member (join, lag, resume)
    join_snapshots: int = 0  # shared join snapshots built (one per group tick at most)
    joins_shared: int = 0  # joins served from a shared join snapshot
    #: lagging members caught up with the missed ticks' shared frames (not coalesced)
    caught_up_shared: int = 0
    slow: dict[str, int] = field(default_factory=dict)  # reason -> disconnects

    def slow_disconnect(self, reason: str) -> None:
        self.slow[reason] = self.slow.get(reason, 0) + 1


class Group:
    __slots__ = (
        "building", "carried", "gseq", "join", "key", "members", "next_tick", "pending",
        "phase", "ring", "sent", "tick_no",
    )  # fmt: skip

    def __init__(self, key: GroupKey, sent: dict[str, int], ring_ticks: int) -> None:
        self.key = key
        self.sent = sent  # topic -> seq as of the last tick
        #: topic -> the group tick that last carried it (for ``TickRecord.repeats``)
        self.carried: dict[str, int] = {}
        self.pending: dict[str, None] = {}  # topics changed since the last tick
        self.ring: deque[TickRecord] = deque(maxlen=ring_ticks)
        self.tick_no = 0
        self.next_tick = 0  # hub tick number at which this group may tick next
        #: the tick numbers it ticks on, modulo ``key.every``, when it has changes
        #: every period (the hub spreads its groups' members over the phases)
        self.phase = 0
        self.members: set[Member] = set()
        #: the store's change count up to which every change of this group's topics
        #: is in its stream (``sent`` plus the ticks so far)
        self.gseq = 0
        #: while not None, the walk over the store's matching topics that is still
        #: filling ``sent`` (members join only once it is done)
        self.building: Iterator[str] | None = None
        #: (tick_no, frames): the join snapshot built at that tick, shared by the
        #: members joining then and, with the ticks since, for a few ticks more
        self.join: tuple[int, tuple[bytes, ...]] | None = None

    def allows(self, topic: str) -> bool:
        grants = self.key.grants
        if grants is None:
            return True
        return any(matches(g, topic) for g in grants)

    def missed(self, cursor: int) -> list[TickRecord] | None:
        """The ticks after ``cursor``, or None if the ring no longer holds them all."""
        if cursor >= self.tick_no:
            return []
        ring = self.ring
        if cursor == self.tick_no - 1:
            return [ring[-1]]  # the common case: one tick behind
        if not ring or ring[0].no > cursor + 1:
            return None
        return [rec for rec in ring if rec.no > cursor]

    def waiting_since(self, cursor: int) -> float | None:
        """Hub time of the oldest tick a member at ``cursor`` has not received."""
        if cursor >= self.tick_no or not self.ring:
            return None
        for rec in self.ring:
            if rec.no > cursor:
                return rec.at
        return None  # unreachable: tick_no > cursor implies a record after it


class Member:
    """One filter of one subscription of one subscriber: a cursor into a group."""

    __slots__ = ("cursor", "group", "joined", "sub", "sub_id")

    def __init__(self, sub: Subscriber, sub_id: str, group: Group) -> None:
        self.sub = sub
        self.sub_id = sub_id
        self.group = group
        self.cursor = 0
        self.joined = False  # False until the member's initial state was built


# A subscriber's subscriptions hold members and every member points at its subscriber:
# the three live in one module (hub.py re-exports them), so no two modules import
# each other.


@dataclass(slots=True)
class Subscription:
    id: str
    filters: tuple[str, ...]
    rate_hz: float
    members: list[Member]


@dataclass(eq=False, slots=True)
class Subscriber:
    """One connection's view of the hub. ``grants`` None means every topic."""

    id: int
    grants: tuple[str, ...] | None
    subs: dict[str, Subscription] = field(default_factory=dict)
    #: resume positions of the current epoch, consulted when a member joins
    positions: dict[str, int] = field(default_factory=dict)
    #: personal catch-up asked for after joining: topic -> base (None: snapshot)
    resync: dict[str, int | None] = field(default_factory=dict)
    ready: bool = False  # something to take (the shell's writer should wake)
    write_started: float | None = None
    closed: bool = False
    #: the one member, while the subscriber has one subscription of one filter (the
    #: steady state of a big screen: ``Hub.take``'s fast path starts here); the hub
    #: clears it whenever a subscription comes or goes
    solo: Member | None = None
