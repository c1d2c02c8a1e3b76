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
