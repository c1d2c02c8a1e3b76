"""A stream to a screen (WebSocket or SSE), and the narrow context it is given.

What every stream shares, WebSocket or Server-Sent Events: the ordered writes to its
socket, the one task that waits while the socket is full (and tells the hub, whose
slow-screen policy times it), the disconnect reason, and the pump the tick loop calls.
``SessionContext`` is all a session may use of the rest of the gateway."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..auth import Authenticator
from ..clock import Clock
from ..config import ServerConfig
from ..core.disconnect import Disconnect
from ..core.hub import Hub, Subscriber
from ..core.protocol import ClientMessage, Welcome
from ..core.state import JsonValue, StateStore
from ..log import RateLimitedLog
from .insight import Insight
from .lifecycle import ADMITTED, CLOSING, DONE, DROPPED, OPEN, Lifecycle, LifecycleError
from .sockio import Outbound, SendFailed
from .stats import ServerStats
from .turns import Turns
from .welcome import WelcomeFrames

__all__ = ["SessionContext", "StreamSession", "WallHook"]


class WallHook(Protocol):
    """The wall registry as the sessions see it (gateway/serve/walls.py)."""

    def receive(self, session: StreamSession, msg: ClientMessage) -> bool: ...

    def stream_opened(self, session: Any, wall: str) -> None: ...


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
    framed: Callable[[bytes, bool, bool], bytes]
    #: a frame as an SSE event, built once per tick
    sse_event: Callable[[bytes, bool], bytes]
    #: the tick loop pumps attached sessions; attach once the session has a subscriber
    attach: Callable[[StreamSession], None]
    #: the session is gone: out of the registry, its disconnect reason counted
    detach: Callable[[StreamSession], None]
    #: True if the tick loop takes the session's pump over (see StreamSession.pump_soon)
    pump_later: Callable[[StreamSession], bool]
    #: alarms, metadata, history: the ack_alarm message, subscription history
    insight: Insight | None = None
    #: wall reports and actions (walls.py): ``report``/``action_ack``, ``/sse?wall=``
    walls: WallHook | None = None
    #: the worker process serving this session (``welcome.worker``), with --workers N
    worker: int | None = None
    #: the welcome's cached pieces (welcome.py)
    welcome_frames: WelcomeFrames = field(default_factory=WelcomeFrames)
    #: connections take turns when many are ready at once (turns.py)
    turns: Turns = field(default_factory=Turns)

    def welcome(self, auth_required: bool) -> Welcome:
        """The first message of every session, WebSocket or SSE."""
        return Welcome(
            self.store.epoch,
            self.clock.wall(),
            self.cfg.heartbeat_s,
            auth_required,
            self.welcome_limits,
            meta=self.insight.welcome if self.insight is not None else None,
            worker=self.worker,
        )


class StreamSession:
    """What WebSocket and SSE sessions share; their lifecycle is :attr:`life`
    (gateway/serve/lifecycle.py states the rules)."""

    __slots__ = (
        "_drain_done",
        "_draining",
        "_nursery",
        "_pending_close",
        "_read_scope",
        "compressed",
        "ctx",
        "ip",
        "life",
        "opener",
        "out",
        "sock",
        "sub",
    )  # fmt: skip

    def __init__(self, ctx: SessionContext, sock: socket.socket, out: Outbound, ip: str) -> None:
        self.ctx = ctx
        self.sock = sock
        self.out = out
        self.ip = ip
        self.sub: Subscriber | None = None
        self.life = Lifecycle()
        #: a close decided before the stream opened, written by run()
        self._pending_close: tuple[Disconnect, str | None] | None = None
        self._draining = False
        self._drain_done = trio.Event()
        self._nursery: trio.Nursery | None = None  # run()'s, for the drain task
        self._read_scope = trio.CancelScope()
        #: bytes that go out in front of the stream's first write (the 101: one
        #: write for the 101 and the welcome)
        self.opener = b""
        #: its frames are deflated (a WebSocket with permessage-deflate)
        self.compressed = False

    @property
    def closing(self) -> bool:
        """Closing, dropped or done: nothing but a close goes out any more."""
        return self.life.ending

    @property
    def reason(self) -> str | None:
        return self.life.reason

    # -- what each kind of stream provides ----------------------------------------------

    def pump(self, now: float | None = None) -> None:
        raise NotImplementedError

    def check_timers(self, now: float, wall: float) -> None:
        raise NotImplementedError

    def _send_close(self, why: Disconnect, text: str | None) -> None:
        """Write the close frame or event (the stream is CLOSING)."""
        raise NotImplementedError

    # -- the lifecycle ----------------------------------------------------------------------

    def close(self, why: Disconnect, text: str | None = None) -> None:
        """Close with ``why``: at once if the stream is open, as the first thing ``run``
        writes if it is not open yet; ignored once it is closing."""
        state = self.life.state
        if state is ADMITTED:
            self.life.to(CLOSING, why.metric)
            self._pending_close = (why, text)
        elif state is OPEN:
            self.life.to(CLOSING, why.metric)
            self._unsubscribe()  # no state frames after the close
            self._send_close(why, text)

    def abort(self, reason: str) -> None:
        """Drop the connection now (the peer cannot even take a last message)."""
        if self.life.state is DROPPED or self.life.state is DONE:
            return
        self.life.to(DROPPED, reason)
        self._unsubscribe()
        self._read_scope.cancel()

    def _open(self) -> bool:
        """ADMITTED -> OPEN, unless a close came first; True if the stream opened."""
        if self.life.state is ADMITTED:
            self.life.to(OPEN)
            return True
        if self._pending_close is not None and self.life.state is CLOSING:
            self._send_close(*self._pending_close)
            self._pending_close = None
        return False

    def _peer_left(self, reason: str) -> None:
        """The read side ended: the peer left (or reset), or reading failed."""
        if self.life.state is CLOSING:
            self.life.note(reason)  # our close was under way: nothing more to wait for
        self.abort(reason)

    async def _finish(self) -> None:
        """Let a close reach the peer for at most ``close_timeout_s``; a dropped
        stream waits for nothing but its turn (turns.py): when thousands of screens
        leave at once (a proxy restarts, a network blip), their teardowns were one
        scheduler batch of up to 250 ms. A closing one does not wait (a shutdown's
        closes must not queue behind one another)."""
        if self.life.state is CLOSING:
            await self._flush()
        else:
            await self.ctx.turns.wait()

    def _teardown(self) -> None:
        """The end of run(): no task may start from here, the tick loop may still pump
        this session until it is detached (and must not start a drain)."""
        if self.life.state is not DONE:
            self.life.to(DONE, "error")
        self._nursery = None
        self._unsubscribe()

    def _unsubscribe(self) -> None:
        if self.sub is not None:
            self.ctx.hub.disconnect(self.sub)

    # -- writing ----------------------------------------------------------------------------

    def _write(self, chunks: list[bytes]) -> bool:
        """Write now what the kernel takes; the rest goes out from the drain task.
        True if everything went out. Only an open or closing stream writes."""
        state = self.life.state
        if state is not OPEN and state is not CLOSING:
            if state is ADMITTED:
                raise LifecycleError("a stream writes nothing before it is open")
            return False
        if self.opener:
            chunks = [self.opener, *chunks]
            self.opener = b""
        try:
            done = self.out.send(chunks)
        except SendFailed as err:
            self._send_failed(err)
            return False
        if not done:
            self._start_drain()
        return done

    def _receive(self, data: bytes) -> None:
        raise NotImplementedError

    def _receive_corked(self, data: bytes) -> None:
        """:meth:`_receive` with what it writes (answers, the frames they release)
        collected and written in one go: one syscall, not one per message."""
        self.out.cork()
        try:
            self._receive(data)
        finally:
            state = self.life.state
            if state is OPEN or state is CLOSING:
                try:
                    done = self.out.uncork()
                except SendFailed as err:
                    self._send_failed(err)
                else:
                    if not done:
                        self._start_drain()
            else:
                self.out.corked = None  # dropped: nothing more goes out

    def _send_failed(self, err: SendFailed) -> None:
        if self.life.state is DROPPED or self.life.state is DONE:
            return  # the peer is known to be gone: a write that fails now is no news
        self.ctx.stats.send_failure(err.reason)
        self.abort("client_gone" if err.reason == "peer_gone" else "error")

    def _start_drain(self) -> None:
        state = self.life.state
        if not self._draining and self._nursery is not None and (state is OPEN or state is CLOSING):
            self._draining = True
            self._drain_done = trio.Event()
            if self.sub is not None:
                self.ctx.hub.write_begun(self.sub, self.ctx.clock.mono())
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            await self.out.drain(turn=self._write_turn)
        except SendFailed as err:
            self._send_failed(err)
            return
        finally:
            self._draining = False
            self._drain_done.set()
        if self.sub is not None:
            self.ctx.hub.write_done(self.sub, self.ctx.clock.mono())
        self.pump_soon()

    async def _write_turn(self) -> None:
        """A drain's write waits its turn like a read's handling (turns.py), unless
        the stream is closing: a close is never held back."""
        if not self.life.ending:
            await self.ctx.turns.wait()

    def pump_soon(self) -> None:
        """:meth:`pump`, from outside the tick loop (a subscribe, a drain's end): at
        once, unless the tick loop is compressing the frames it has just built; the
        pump would then deflate the same frames again itself (measured in a join wave:
        1 MB join snapshots, 5 ms each, in a subscribe's step), so the tick loop
        pumps this session once they are compressed."""
        if not self.ctx.pump_later(self):
            self.pump()

    async def _flush(self) -> None:
        """Let what is queued (a close frame, a last event) reach the peer for at most
        ``close_timeout_s``; only one task at a time may wait on the socket."""
        if self.out.idle:
            return
        self._start_drain()
        with trio.move_on_after(self.ctx.cfg.close_timeout_s):
            await self._drain_done.wait()
