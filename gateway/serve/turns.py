"""Scheduler batches of bounded length: connections take turns when many are ready.

Trio runs every task that is ready in one batch before it looks at timers and I/O
again. In a wave of joining screens, hundreds of handshakes and first messages (each
0.2 ms of CPU or more) are ready at the same moment and land in one batch, and every
timer waits for all of it: in a 2,000-screen wave the probe saw batches of up to
150 ms holding about 240 connection steps each, while no single step took 15 ms.

So a connection handles what it has read at once only while the current batch is
young (has run less than ``BATCH_S``) and nobody waits before it; otherwise it parks
in a FIFO, and :meth:`Turns.run` wakes ``PER_BATCH`` of the waiters per batch. A
woken waiter goes on only while its batch is still young, or if it is the first
comer among those woken and nobody went on before it in this batch; else it goes back
to its place at the head of the queue (so the order stays first come, first served). A count
alone did not bound a batch: a joining screen's step (its subscribe's first write of
a large join snapshot) takes 1 to 3 ms, and eight of them made batches of 25 ms
(2,000 screens joining ``#`` at 10,000 topics: 4 % of the loop-lag samples over
10 ms). A batch starts when Trio's I/O wait returns (an instrument's
``after_io_wait``: one call per batch, nothing per task).

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
        self.returned = 0  # woken into an old batch and sent back (a count, for tests)
        self._through = 0  # handlings let through in the current batch
        self._arrivals = 0
        #: (arrival number, task): the order is kept when a woken waiter goes back
        self._queue: list[tuple[int, trio.lowlevel.Task]] = []
        self._gone: set[int] = set()  # arrivals cancelled while they waited
        self._woken: set[int] = set()  # arrivals woken that have not run yet
        self._waiting = trio.Event()

    def after_io_wait(self, timeout: float) -> None:
        self.started = time.perf_counter()
        self._through = 0

    def _young(self) -> bool:
        return time.perf_counter() - self.started <= self.seconds

    async def wait(self) -> None:
        """At once while the batch is young and nobody waits; else in turn."""
        if not self._queue and self._young():
            self._through += 1
            return
        self.waited += 1
        self._arrivals += 1
        place = (self._arrivals, trio.lowlevel.current_task())
        while True:
            heapq.heappush(self._queue, place)
            self._waiting.set()
            await self._park(place[0])
            first = place[0] == min(self._woken)  # of those woken into this batch
            self._woken.discard(place[0])
            if self._young() or (first and not self._through):
                self._through += 1
                return
            self.returned += 1  # the batch has run its time: back to the head

    async def _park(self, arrival: int) -> None:
        def abort(_: object) -> trio.lowlevel.Abort:
            self._gone.add(arrival)  # still in the queue: skipped when reached
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def run(self) -> None:
        """Wake ``per_batch`` waiters per batch, in the order they came."""
        while True:
            await self._waiting.wait()
            while self._queue or self._woken:
                if self._woken:  # not all have run yet (the batch ran this task first):
                    await trio.lowlevel.checkpoint()  # those that go back come first
                    continue
                woken = 0
                while self._queue and woken < self.per_batch:
                    arrival, task = heapq.heappop(self._queue)
                    if arrival in self._gone:
                        self._gone.discard(arrival)
                        continue
                    self._woken.add(arrival)
                    trio.lowlevel.reschedule(task)
                    woken += 1
                await trio.lowlevel.checkpoint()  # they run in the next batch
            self._waiting = trio.Event()
