"""The accept loop under a reconnect storm: everything queued in the backlog is
accepted, at most ACCEPT_BATCH between two event-loop checkpoints."""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Callable

import trio

from gateway.log import RateLimitedLog
from gateway.serve.admission import ACCEPT_BATCH, accept_loop, listen

QUEUED = 300  # more than four batches, fewer than any backlog


class CountingListener:
    """A real listening socket that counts what was accepted from it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.accepted = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, addr = self.sock.accept()
        self.accepted += 1
        return conn, addr


async def accept_backlog(wrap: Callable[[socket.socket], CountingListener]) -> list[int]:
    """QUEUED connections waiting in a listener's backlog, accepted by ``accept_loop``
    from ``wrap(listener)``: how many were accepted each time another task (this one)
    got to run."""
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(QUEUED)]
    counting = wrap(listener)
    handled = 0
    steps: list[int] = []  # accepted so far, each time another task got to run

    async def handler(sock: socket.socket, ip: str) -> None:
        nonlocal handled
        assert ip == "127.0.0.1"
        sock.close()
        handled += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                accept_loop,
                counting,  # type: ignore[arg-type]
                nursery,
                handler,
                0,
                RateLimitedLog(logging.getLogger("test")),
            )
            with trio.fail_after(10):
                while handled < QUEUED:
                    steps.append(counting.accepted)
                    await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    finally:
        for c in clients:
            c.close()
        listener.close()
    assert counting.accepted == QUEUED
    return [b - a for a, b in itertools.pairwise(steps)]


async def test_a_full_backlog_is_accepted_in_bounded_batches() -> None:
    jumps = await accept_backlog(CountingListener)
    # each of our steps sees at most two of the accept loop's (trio may run the
    # tasks of a batch in either order): never the whole backlog at once
    assert 0 < max(jumps) <= 2 * ACCEPT_BATCH


class SlowListener(CountingListener):
    """Each accept costs 0.25 ms of the (mock) clock: a step's time, not its count,
    must end it."""

    def __init__(self, sock: socket.socket, clock: trio.testing.MockClock) -> None:
        super().__init__(sock)
        self.clock = clock

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        got = super().accept()
        self.clock.jump(0.00025)
        return got


async def test_accepting_also_yields_once_its_turn_is_spent(
    mock_clock: trio.testing.MockClock,
) -> None:
    """1 ms is 4 accepts here; the clock is read every 8: at most 8 between two
    checkpoints, not ACCEPT_BATCH (64)."""
    mock_clock.rate = 1.0
    jumps = await accept_backlog(lambda sock: SlowListener(sock, mock_clock))
    assert 0 < max(jumps) <= 2 * 8
