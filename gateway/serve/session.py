"""What every stream to a screen shares, WebSocket or Server-Sent Events: the ordered
writes to its socket, the one task that waits while the socket is full (and tells the
hub, whose slow-screen policy times it), the disconnect reason, and the pump the tick
loop calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..core.hub import Subscriber
from .sockio import Outbound, SendFailed

if TYPE_CHECKING:
    import socket

    from .server import Server

__all__ = ["StreamSession"]


class StreamSession:
    __slots__ = (
        "_drain_done", "_draining", "_nursery", "_read_scope", "closing", "ip", "out",
        "reason", "server", "sock", "sub",
    )  # fmt: skip

    def __init__(self, server: Server, sock: socket.socket, out: Outbound, ip: str) -> None:
        self.server = server
        self.sock = sock
        self.out = out
        self.ip = ip
        self.sub: Subscriber | None = None
        self.closing = False
        self.reason: str | None = None  # disconnect reason, once known
        self._draining = False
        self._drain_done = trio.Event()
        # set while run() can start tasks; None from its teardown on, when the tick loop
        # may still pump this session but must not start a drain
        self._nursery: trio.Nursery | None = None
        self._read_scope = trio.CancelScope()

    # -- what each kind of stream provides ----------------------------------------------

    def pump(self, now: float | None = None) -> None:
        raise NotImplementedError

    def check_timers(self, now: float, wall: float) -> None:
        raise NotImplementedError

    def close(self, code: int, text: str, reason: str) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------

    def _set_reason(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def abort(self, reason: str) -> None:
        """Drop the connection now (the peer cannot even take a last message)."""
        self._set_reason(reason)
        self.closing = True
        if self.sub is not None:
            self.server.hub.disconnect(self.sub)
        self._read_scope.cancel()

    def _write(self, chunks: list[bytes]) -> bool:
        """Write now what the kernel takes; the rest goes out from the drain task.
        True if everything went out."""
        try:
            done = self.out.send(chunks)
        except SendFailed as err:
            self._send_failed(err)
            return False
        if not done:
            self._start_drain()
        return done

    def _send_failed(self, err: SendFailed) -> None:
        self.server.stats.send_failure(err.reason)
        self.abort("client_gone" if err.reason == "peer_gone" else "error")

    def _start_drain(self) -> None:
        if not self._draining and self._nursery is not None:
            self._draining = True
            self._drain_done = trio.Event()
            if self.sub is not None:
                self.server.hub.write_begun(self.sub, self.server.clock.mono())
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            await self.out.drain()
        except SendFailed as err:
            self._send_failed(err)
            return
        finally:
            self._draining = False
            self._drain_done.set()
        if self.sub is not None:
            self.server.hub.write_done(self.sub, self.server.clock.mono())
        self.pump()

    async def _flush(self) -> None:
        """Let what is queued (a close frame, a last event) reach the peer for at most
        ``close_timeout_s``; only one task at a time may wait on the socket."""
        if self.out.idle:
            return
        self._start_drain()
        with trio.move_on_after(self.server.cfg.server.close_timeout_s):
            await self._drain_done.wait()
