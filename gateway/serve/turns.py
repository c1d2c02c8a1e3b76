"""Scheduler batches of bounded length: connections take turns when many are ready.

Trio runs every task that is ready in one batch before it looks at timers and I/O
again. In a wave of joining screens, hundreds of handshakes and first messages (each
0.2 ms of CPU or more) are ready at the same moment and land in one batch, and every
timer waits for all of it: in a 2,000-screen wave the probe saw batches of up to
150 ms holding about 240 connection steps each, while no single step took 15 ms.

So a connection handles what it has read at once only while the current batch is
young (has run less than ``BATCH_S``) and nobody waits before it; otherwise it parks
in a FIFO, and :meth:`Turns.run` wakes ``PER_BATCH`` of the waiters per batch. The
woken share ``BATCH_S`` of each batch: the first of them to run goes on, and the
others while less than ``BATCH_S`` has passed since it started; the rest go back to
their places at the head of the queue (those waiting longest are woken first; the
order among those woken together is the scheduler's). A count alone did not bound a
batch: a joining screen's step (its subscribe's first write of a large join snapshot)
takes 1 to 3 ms, and eight of them made batches of 25 ms (2,000 screens joining ``#``
at 10,000 topics: 4 % of the loop-lag samples over 10 ms). The time is counted from
the first woken one's start, not the batch's: other tasks' steps (the tick loop's, a
full collection) make most batches of a busy loop older than ``BATCH_S`` before any
waiter runs, and the connections' share must not shrink to one step a batch then.
A batch starts when Trio's I/O wait returns (an instrument's ``after_io_wait``: one
call per batch, nothing per task).

What waits its turn: the handling of bytes already read, a teardown, and each write
of a drain (the bytes a full socket queued: in a wave of screens joining a large
stream uncompressed, thousands of sockets become writable together); never a close,
nor a write the tick loop's pump makes (its batches are bounded by the fan-out).
Nothing is read twice or lost; a waiting connection keeps every deadline (a
cancelled wait leaves the queue).
"""

from __future__ import annotations

import heapq
import time

import trio

__all__ = ["BATCH_S", "PER_BATCH", "Turns"]

#: what a batch may have run before a connection's handling waits its turn
BATCH_S = 0.002
#: waiting connections let through per batch (each about 0.2 to 0.5 ms of CPU)
PER_BATCH = 8


class Turns(trio.abc.Instrument):
    """Install it with ``trio.lowlevel.add_instrument`` and run :meth:`run` for the
    server's life; then ``await turns.wait()`` before work that may take its turn."""

    def __init__(self, seconds: float = BATCH_S, per_batch: int = PER_BATCH) -> None:
        self.seconds = seconds
        self.per_batch = per_batch
        self.started = time.perf_counter()
        self.waited = 0  # handlings that waited their turn (a count, for tests)
        self.returned = 0  # woken once the waiters' time was spent: back (for tests)
        #: when the first woken waiter ran in the current batch (None: none yet)
        self._turn_at: float | None = None
        self._arrivals = 0
        #: (arrival number, task): the order is kept when a woken waiter goes back
        self._queue: list[tuple[int, trio.lowlevel.Task]] = []
        self._gone: set[int] = set()  # arrivals cancelled while they waited
        self._waiting = trio.Event()

    def after_io_wait(self, timeout: float) -> None:
        self.started = time.perf_counter()
        self._turn_at = None

    def _young(self) -> bool:
        return time.perf_counter() - self.started <= self.seconds

    async def wait(self) -> None:
        """At once while the batch is young and nobody waits; else in turn."""
        if not self._queue and self._young():
            return
        self.waited += 1
        self._arrivals += 1
        place = (self._arrivals, trio.lowlevel.current_task())
        while True:
            heapq.heappush(self._queue, place)
            self._waiting.set()
            await self._park(place[0])
            now = time.perf_counter()
            if self._turn_at is None:  # the first of its batch to run: the turn starts
                self._turn_at = now
            elif now - self._turn_at > self.seconds:
                self.returned += 1  # the waiters' time in this batch is spent: back
                continue
            return

    async def _park(self, arrival: int) -> None:
        def abort(_: object) -> trio.lowlevel.Abort:
            self._gone.add(arrival)  # still in the queue: skipped when reached
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        """Wake ``per_batch`` waiters per batch, in the order they came."""
        while True:
            await self._waiting.wait()
            while self._queue:
                woken = 0
                while self._queue and woken < self.per_batch:
                    arrival, task = heapq.heappop(self._queue)
                    if arrival in self._gone:
                        self._gone.discard(arrival)
                        continue
                    trio.lowlevel.reschedule(task)
                    woken += 1
                await trio.lowlevel.checkpoint()  # they run in the next batch
            self._waiting = trio.Event()
