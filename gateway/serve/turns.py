"""Scheduler batches of bounded length: connections take turns when many are ready.

Trio runs every task that is ready in one batch before it looks at timers and I/O
again. In a wave of joining screens, hundreds of handshakes and first messages (each
0.2 ms of CPU or more) are ready at the same moment and land in one batch, and every
timer waits for all of it: in a 2,000-screen wave the probe saw batches of up to
150 ms holding about 240 connection steps each, while no single step took 15 ms.

So a connection handles what it has read at once only while the current batch is
young (has run less than ``BATCH_S``) and nobody waits before it; otherwise it parks
in a FIFO, and :meth:`Turns.run` lets ``PER_BATCH`` of the waiters through per batch.
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
        self._lot = trio.lowlevel.ParkingLot()
        self._waiting = trio.Event()

    def after_io_wait(self, timeout: float) -> None:
        self.started = time.perf_counter()

    async def wait(self) -> None:
        """At once while the batch is young and nobody waits; else in turn."""
        if not self._lot and time.perf_counter() - self.started <= self.seconds:
            return
        self.waited += 1
        self._waiting.set()
        await self._lot.park()

    async def run(self) -> None:
        """Let ``per_batch`` waiters through per batch, in the order they came."""
        while True:
            await self._waiting.wait()
            while self._lot:
                self._lot.unpark(count=self.per_batch)
                await trio.lowlevel.checkpoint()  # they run in the next batch
            self._waiting = trio.Event()
