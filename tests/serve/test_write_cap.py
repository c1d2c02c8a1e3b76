"""One write hands the kernel at most ``MAX_WRITE`` bytes: with thousands of screens
writable at once (a join wave), each drain task's step, and so the loop lag, stays
small even when the socket buffer could take megabytes."""

from __future__ import annotations

import socket

import trio

from gateway.serve.sockio import MAX_WRITE, Outbound


class Counter:
    bytes_sent = 0


async def test_a_large_write_goes_out_in_bounded_steps() -> None:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    counter = Counter()
    out = Outbound(a, counter)
    frame = bytes(3 << 20)
    assert not out.send([b"head", frame])  # the rest is queued, not written now
    assert counter.bytes_sent <= MAX_WRITE
    assert not out.send_one(frame)  # queued behind
    received = 0

    async def reader() -> None:
        nonlocal received
        while received < 4 + 2 * len(frame):
            await trio.lowlevel.wait_readable(b)
            received += len(b.recv(1 << 20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await out.drain()
    assert received == counter.bytes_sent == 4 + 2 * len(frame)
    c, d = socket.socketpair()
    c.setblocking(False)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    single = Counter()
    assert not Outbound(c, single).send_one(frame)
    assert 0 < single.bytes_sent <= MAX_WRITE
    for s in (a, b, c, d):
        s.close()
