"""Connections take turns when many are ready at once (gateway/serve/turns.py): at
most ``per_batch`` waiting handlings run per scheduler batch, and only for ``seconds``
of it, the longest waiting first, all of them do run, a young batch with nobody
waiting costs nothing, and a cancelled wait leaves the queue."""

from __future__ import annotations

import trio

from gateway.serve.turns import Turns


class BatchCount(trio.abc.Instrument):
    """How many handlings ran in each scheduler batch."""

    def __init__(self) -> None:
        self.batches: list[int] = [0]

    def after_io_wait(self, timeout: float) -> None:
        self.batches.append(0)


async def _wave(
    turns: Turns, n: int, *, then_seconds: float | None = None
) -> tuple[list[int], list[int], BatchCount]:
    """``n`` connections wait their turn (all park: the batch counts as old); with
    ``then_seconds``, the batches they are woken into count as young by that."""
    counted = BatchCount()
    trio.lowlevel.add_instrument(turns)
    trio.lowlevel.add_instrument(counted)
    arrived: list[int] = []
    done: list[int] = []

    async def connection(i: int) -> None:
        arrived.append(i)
        await turns.wait()
        done.append(i)
        counted.batches[-1] += 1

    try:
        async with trio.open_nursery() as services:
            async with trio.open_nursery() as connections:
                for i in range(n):
                    connections.start_soon(connection, i)
                await trio.testing.wait_all_tasks_blocked()
                if then_seconds is not None:
                    turns.seconds = then_seconds
                services.start_soon(turns.run)
            services.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counted)
        trio.lowlevel.remove_instrument(turns)
    return arrived, done, counted


async def test_at_most_per_batch_waiters_run_in_a_young_batch_and_all_run() -> None:
    turns = Turns(seconds=0.0, per_batch=4)
    _, done, counted = await _wave(turns, 40, then_seconds=60.0)
    assert sorted(done) == list(range(40))
    assert turns.waited == 40 and turns.returned == 0
    assert max(counted.batches) == 4  # young batches: the count is the bound
    assert sum(1 for n in counted.batches if n) == 10


async def test_the_waiters_woken_into_a_batch_share_its_time() -> None:
    """A count alone did not bound a batch (joining screens' steps of 1 to 3 ms, eight
    to a batch): the woken share ``seconds`` of a batch, counted from the first of them
    to run, and the rest go back to their places (here ``seconds`` is 0: one a batch)."""
    turns = Turns(seconds=0.0, per_batch=4)
    _, done, counted = await _wave(turns, 40)
    assert sorted(done) == list(range(40))
    assert max(counted.batches) == 1
    assert sum(1 for n in counted.batches if n) == 40
    assert turns.returned > 0


async def test_a_young_batch_with_nobody_waiting_lets_a_handling_through_at_once() -> None:
    turns = Turns(seconds=60.0)
    trio.lowlevel.add_instrument(turns)
    try:
        with trio.fail_after(1):
            await turns.wait()  # no turns.run(): it would hang if it parked
    finally:
        trio.lowlevel.remove_instrument(turns)
    assert turns.waited == 0


async def test_a_cancelled_wait_leaves_the_queue() -> None:
    turns = Turns(seconds=0.0, per_batch=1)
    trio.lowlevel.add_instrument(turns)
    done: list[str] = []
    scopes: dict[str, trio.CancelScope] = {}

    async def patient(name: str) -> None:
        with trio.CancelScope() as scopes[name]:
            await turns.wait()
            done.append(name)

    try:
        async with trio.open_nursery() as services:
            async with trio.open_nursery() as connections:
                connections.start_soon(patient, "first")
                await trio.testing.wait_all_tasks_blocked()
                scopes["first"].cancel()  # e.g. its deadline: it leaves before its turn
                connections.start_soon(patient, "second")
                await trio.testing.wait_all_tasks_blocked()
                services.start_soon(turns.run)
            services.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(turns)
    assert done == ["second"]
