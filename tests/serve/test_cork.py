"""A corked Outbound (gateway/serve/sockio.py) writes nothing until it is uncorked,
then everything in order, in one go; what the kernel does not take stays queued."""

from __future__ import annotations

import socket

from gateway.serve.sockio import Outbound


class Counter:
    bytes_sent = 0


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def pending(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


def test_corked_writes_go_out_at_uncork_in_order() -> None:
    a, b = pair()
    out = Outbound(a, Counter())
    out.cork()
    assert out.send([b"101 ", b"welcome "]) and out.send_one(b"ack ")
    assert out.send_one(b"frame") is True  # taken: the caller goes on as if written
    assert pending(b) == b"" and out.idle
    assert out.uncork() is True
    assert pending(b) == b"101 welcome ack frame"
    assert out.corked is None and out.counter.bytes_sent == 21
    assert out.send_one(b"later") and pending(b) == b"later"  # not corked any more
    assert out.uncork() is True  # nothing collected: nothing to write
    a.close()
    b.close()


def test_what_the_kernel_does_not_take_at_uncork_is_queued() -> None:
    a, b = pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    out = Outbound(a, Counter())
    out.cork()
    big = b"x" * (1 << 20)
    out.send_one(big)
    assert out.uncork() is False  # the drain writes the rest
    assert out.queue and 0 < out.counter.bytes_sent < len(big)
    assert out.queued_bytes == len(big) - out.counter.bytes_sent
    a.close()
    b.close()
