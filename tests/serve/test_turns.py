"""Connections take turns when many are ready at once (gateway/serve/turns.py): at
most ``per_batch`` waiting handlings run per scheduler batch, all of them do run, a
young batch with nobody waiting costs nothing, and a cancelled wait leaves the queue."""

from __future__ import annotations

import trio

from gateway.serve.turns import Turns


class BatchCount(trio.abc.Instrument):
    """How many handlings ran in each scheduler batch."""

    def __init__(self) -> None:
        self.batches: list[int] = [0]

    def after_io_wait(self, timeout: float) -> None:
        self.batches.append(0)


async def test_at_most_per_batch_waiters_run_in_a_batch_and_all_run() -> None:
    turns = Turns(seconds=0.0, per_batch=4)  # every batch counts as old: all wait
    counted = BatchCount()
    trio.lowlevel.add_instrument(turns)
    trio.lowlevel.add_instrument(counted)
    done: list[int] = []

    async def connection(i: int) -> None:
        await turns.wait()
        done.append(i)
        counted.batches[-1] += 1

    try:
        async with trio.open_nursery() as services:
            services.start_soon(turns.run)
            async with trio.open_nursery() as connections:
                for i in range(40):
                    connections.start_soon(connection, i)
            services.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counted)
        trio.lowlevel.remove_instrument(turns)
    assert sorted(done) == list(range(40))
    assert turns.waited == 40
    assert max(counted.batches) <= 4
    assert sum(1 for n in counted.batches if n) >= 10


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
