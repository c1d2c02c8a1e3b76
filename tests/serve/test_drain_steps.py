"""A drain (gateway/serve/sockio.py) writes a full socket's queue in bounded steps:
at most ``step_bytes`` a write and, given a ``turn``, a wait for it before each write
(turns.py), so thousands of sockets that become writable together do not run all
their writes in one scheduler batch. Every byte still arrives, in order."""

from __future__ import annotations

import socket

import trio

from gateway.serve.sockio import Outbound


class Counter:
    bytes_sent = 0


async def test_a_drain_writes_step_bytes_at_a_time_each_after_its_turn() -> None:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    out = Outbound(a, Counter())
    data = bytes(range(256)) * 4096  # 1 MiB
    assert out.send([data[:300_000], data[300_000:]]) is False  # most of it is queued
    queued_at_start = out.queued_bytes
    written_at_turns: list[int] = []

    async def turn() -> None:
        written_at_turns.append(out.counter.bytes_sent)
        await trio.lowlevel.checkpoint()

    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(data):
            await trio.lowlevel.wait_readable(b)
            received.extend(b.recv(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await out.drain(turn=turn, step_bytes=64 * 1024)
    assert bytes(received) == data and out.idle and out.queued_bytes == 0
    ends = [*written_at_turns[1:], len(data)]
    steps = [y - x for x, y in zip(written_at_turns, ends, strict=True)]
    assert max(steps) <= 64 * 1024
    assert len(written_at_turns) >= queued_at_start // (64 * 1024)
    a.close()
    b.close()


class Steps(trio.abc.Instrument):
    """The steps of one task, counted."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_a_socket_with_room_is_not_waited_for_between_writes() -> None:
    """A drain waits for the socket only when the kernel took less than a write
    offered; after a write taken whole, the next waits only its turn. Waiting for the
    socket as well, a drain parked in the turns was also woken by the socket's
    readiness, only to park again: hundreds of such wake-ups in one batch when many
    screens read as fast as the gateway writes."""
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    out = Outbound(a, Counter())
    chunk = 4096
    out.queue = [bytes([i]) * chunk for i in range(4)]  # 16 KiB: room in any buffer
    out.queued_bytes = 4 * chunk
    turns = 0
    steps: list[int] = []

    async def turn() -> None:  # a turn given at once (a young batch, nobody waiting)
        nonlocal turns
        turns += 1

    async def drain() -> None:
        probe = Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(probe)
        try:
            await out.drain(turn=turn, step_bytes=chunk)
        finally:
            trio.lowlevel.remove_instrument(probe)
            steps.append(probe.count)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
    assert turns == 4  # each write still waits its turn
    # counted from the drain's first wait for the socket (a drain starts on a full
    # one): one step writes all four; a wait for the socket before each write made
    # it four steps
    assert steps == [1]
    assert b.recv(1 << 16) == b"".join(bytes([i]) * chunk for i in range(4))
    a.close()
    b.close()
