"""A stream to a screen (WebSocket or SSE), and the narrow context it is given.

What every stream shares, WebSocket or Server-Sent Events: the ordered writes to its
socket, the one task that waits while the socket is full (and tells the hub, whose
slow-screen policy times it), the disconnect reason, and the pump the tick loop calls.
``SessionContext`` is all a session may use of the rest of the gateway."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from ..auth import Authenticator
from ..clock import Clock
from ..config import ServerConfig
from ..core.hub import Hub, Subscriber
from ..core.protocol import ClientMessage
from ..core.state import JsonValue, StateStore
from ..log import RateLimitedLog
from .insight import Insight
from .sockio import Outbound, SendFailed
from .stats import ServerStats

__all__ = ["SessionContext", "StreamSession"]


@dataclass(frozen=True, slots=True, eq=False)
class SessionContext:
    """Everything a session may use of the gateway, and nothing else: settings, the
    hub and store it serves from, counters, the tick's shared framing, the decoder,
    and the registry the tick and sweep loops find it in."""

    cfg: ServerConfig
    hub: Hub
    store: StateStore  # the epoch, and SSE's resume point (which topics changed since)
    clock: Clock
    auth: Authenticator  # the in-band 'auth' message
    stats: ServerStats
    log: RateLimitedLog
    welcome_limits: Mapping[str, JsonValue]
    decode: Callable[[str], ClientMessage]
    #: a frame as a WebSocket text frame (deflated if asked), built once per tick
    framed: Callable[[bytes, bool], bytes]
    #: a frame as an SSE event, built once per tick
    sse_event: Callable[[bytes], bytes]
    #: the tick loop pumps attached sessions; attach once the session has a subscriber
    attach: Callable[[StreamSession], None]
    #: the session is gone: out of the registry, its disconnect reason counted
    detach: Callable[[StreamSession], None]
    #: alarms, metadata, history: the ack_alarm message, subscription history
    insight: Insight | None = None


class StreamSession:
    __slots__ = (
        "_drain_done",
        "_draining",
        "_nursery",
        "_read_scope",
        "closing",
        "ctx",
        "ip",
        "out",
        "reason",
        "sock",
        "sub",
    )  # fmt: skip

    def __init__(self, ctx: SessionContext, sock: socket.socket, out: Outbound, ip: str) -> None:
        self.ctx = ctx
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
            self.ctx.hub.disconnect(self.sub)
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
        self.ctx.stats.send_failure(err.reason)
        self.abort("client_gone" if err.reason == "peer_gone" else "error")

    def _start_drain(self) -> None:
        if not self._draining and self._nursery is not None:
            self._draining = True
            self._drain_done = trio.Event()
            if self.sub is not None:
                self.ctx.hub.write_begun(self.sub, self.ctx.clock.mono())
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
            self.ctx.hub.write_done(self.sub, self.ctx.clock.mono())
        self.pump()

    async def _flush(self) -> None:
        """Let what is queued (a close frame, a last event) reach the peer for at most
        ``close_timeout_s``; only one task at a time may wait on the socket."""
        if self.out.idle:
            return
        self._start_drain()
        with trio.move_on_after(self.ctx.cfg.close_timeout_s):
            await self._drain_done.wait()
