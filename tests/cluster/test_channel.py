"""The parent-worker channel over a real socketpair: messages whole and in order,
the byte cap of a queue, and what the reader refuses."""

from __future__ import annotations

import socket

import pytest
import trio

from gateway.cluster.channel import HEAD, ChannelError, Kind, Outbox, Reader


def pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        trio.SocketStream(trio.socket.from_stdlib_socket(b)),
    )


async def test_messages_arrive_whole_and_in_order() -> None:
    left, right = pair()
    out = Outbox(1 << 20)
    big = bytes(range(256)) * 2000  # larger than one read
    assert out.push(Kind.RECORDS, b"[1]")
    assert out.push(Kind.SYNCED)
    assert out.push(Kind.RECORDS, big)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.run, left)
        reader = Reader(right)
        assert await reader.receive() == (Kind.RECORDS, b"[1]")
        assert await reader.receive() == (Kind.SYNCED, b"")
        assert await reader.receive() == (Kind.RECORDS, big)
        await out.wait_below(0)
        assert out.queued == 0 and out.sent == 3 * HEAD.size + 3 + len(big)
        await left.aclose()
        assert await reader.receive() is None  # the end of the channel
        await right.aclose()
        nursery.cancel_scope.cancel()


async def test_a_queue_never_passes_its_cap() -> None:
    out = Outbox(1000)
    assert out.push(Kind.RECORDS, b"x" * 900)
    assert not out.push(Kind.RECORDS, b"x" * 100)  # 900 + 100 + 2 headers > 1000
    assert out.overflowed and out.queued == 900 + HEAD.size
    assert not out.push(Kind.SYNCED)  # once overflowed, nothing more: the worker goes


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (HEAD.pack(3, 99) + b"abc", "unknown message kind"),
        (HEAD.pack(1 << 30, Kind.RECORDS), "at most"),
        (HEAD.pack(10, Kind.RECORDS) + b"abc", "inside a message"),
    ],
)
async def test_the_reader_refuses_what_is_not_a_message(data: bytes, why: str) -> None:
    left, right = pair()
    await left.send_all(data)
    await left.aclose()
    async with right:
        with pytest.raises(ChannelError, match=why):
            await Reader(right).receive()
