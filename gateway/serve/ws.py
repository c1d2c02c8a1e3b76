"""One WebSocket connection: inbound messages to the hub, frames out to the socket.

Rules:
* The connection's task reads; nothing else awaits its socket except a drain task,
  started in the connection's own nursery only while the kernel buffer is full.
* State frames come from ``hub.take`` only while nothing is queued (``pump``): a
  screen that cannot keep up is not handed more bytes; its hub cursor lags and it
  later gets coalesced frames (or is closed with 4008 by the slow policy).
* Every close path goes through :meth:`WsSession.close` (a close frame, then the
  close deadline) or :meth:`WsSession.abort` (no frame: the peer is unreachable),
  and records one disconnect reason.
"""

from __future__ import annotations

import socket

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.extensions import Extension

from ..auth import AuthError, Identity
from ..core import disconnect as dc
from ..core.disconnect import Disconnect
from ..core.protocol import (
    Ack,
    AckAlarm,
    Auth,
    ClientMessage,
    Error,
    ProtocolError,
    Resume,
    Subscribe,
    Unsubscribe,
    Welcome,
)  # fmt: skip
from ..core.protocol import Ping as AppPing
from ..core.protocol import Pong as AppPong
from .budget import ANSWER_OVERHEAD, PeerLimits
from .deflate import BoundedDeflate, deflate_frame
from .frameguard import FrameGuard
from .inbound import text_frames
from .insight import send_each
from .lifecycle import CLOSING, DROPPED, OPEN, LifecycleError
from .session import SessionContext, StreamSession
from .sockio import Outbound, SendFailed, recv_some, text_frame_chunks, text_frame_header
from .welcome import control_frame

__all__ = ["WsSession"]

#: frames up to this size are framed by concatenation (cached per tick when shared);
#: larger ones are written as header + frame without a copy
_COPY_LIMIT = 16 * 1024


class WsSession(StreamSession):
    __slots__ = (
        "_parts", "_size", "_trailing", "errors", "fast_in", "guard", "history_hold",
        "identity", "last_rx", "limits", "opened_at", "partial_since", "ping_sent_at", "ws",
    )  # fmt: skip

    def __init__(
        self,
        ctx: SessionContext,
        sock: socket.socket,
        out: Outbound,
        ip: str,
        identity: Identity | None,
        trailing: bytes,
        deflate: BoundedDeflate | None = None,
    ) -> None:
        super().__init__(ctx, sock, out, ip)
        self.identity = identity
        self.history_hold = 0  # history being sent: live frames wait (insight.py)
        # wsproto inflates what the client compresses; FanOut.framed deflates ours once
        self.guard = FrameGuard(ctx.cfg.max_message_bytes, self.life)  # no cycle via self
        extensions: list[Extension] = [self.guard, deflate] if deflate else [self.guard]
        self.ws = Connection(ConnectionType.SERVER, extensions=extensions)
        self.fast_in = True  # nothing went to wsproto yet (inbound.py)
        self.partial_since: float | None = None  # a message begun and not finished
        self.compressed = deflate is not None
        now = ctx.clock.mono()
        self.opened_at = now
        self.last_rx = now
        self.ping_sent_at: float | None = None
        self.errors = 0
        self._trailing = trailing
        self._parts: list[str] = []
        self._size = 0
        self.limits = PeerLimits(ctx.cfg, now, ctx.stats.inbound_rejected)

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        ctx = self.ctx
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    if self._open():
                        if self.identity is not None:
                            self.sub = ctx.hub.connect(self.identity.grants)
                            ctx.attach(self)
                        self._send_control(ctx.welcome(self.identity is None))
                    with self._read_scope:
                        if self._trailing:
                            self._receive(self._trailing)
                            self._trailing = b""
                        if not self._finished():
                            await self._read_loop()
                    await self._finish()  # a close frame (ours or the reply), briefly
                finally:
                    self._teardown()
                    if nursery.child_tasks:  # a drain or history task (a cancel is not free)
                        nursery.cancel_scope.cancel()
        finally:
            self.ctx.detach(self)

    def _finished(self) -> bool:
        return (
            self.ws.state is ConnectionState.CLOSED
            or self.reason == "client_close"
            or self.life.state is DROPPED
        )

    async def _read_loop(self) -> None:
        while not self._finished():
            try:
                data = await recv_some(self.sock)
            except (ConnectionResetError, BrokenPipeError):
                self._peer_left("client_gone")  # it left with data unread: a reset
                return
            except OSError:
                self._peer_left("error")
                return
            if not data:
                self._peer_left("client_gone")
                return
            self.last_rx = self.ctx.clock.mono()
            self.ping_sent_at = None
            await self.ctx.turns.wait()  # its turn, when many are ready (turns.py)
            self._receive_corked(data)

    def _send_close(self, why: Disconnect, text: str | None) -> None:
        """A close frame, and ``close_timeout_s`` for the peer to answer."""
        if self.ws.state is ConnectionState.OPEN:
            self._write([self.ws.send(CloseConnection(why.code, (text or why.text)[:120]))])
        self._read_scope.deadline = min(
            self._read_scope.deadline,
            trio.current_time() + self.ctx.cfg.close_timeout_s,
        )

    # -- writing ---------------------------------------------------------------------

    def _send_control(self, msg: Welcome | Ack | Error | AppPong) -> None:
        if not self.life.open:
            raise LifecycleError(f"'{msg.type}' on a stream that is not open")
        frame = control_frame(msg, self.compressed, self.ctx.welcome_frames)
        if not self.limits.admit_answer(self.out, len(frame) + ANSWER_OVERHEAD):
            self.close(dc.UNREAD)  # the peer does not read its answers (budget.py)
            return
        self._write([frame])

    def _write_text(self, data: bytes) -> None:
        """One text frame, deflated when the peer took compression (docs/protocol.md)."""
        if self.compressed:
            self._write([deflate_frame(data)])
        else:
            self._write(text_frame_chunks(data, _COPY_LIMIT))

    def _answer_ping(self) -> None:
        """RFC 6455 5.5.3: only the latest Ping is answered, once nothing is queued."""
        if self.limits.pong is not None and not self.closing and self.out.idle:
            if self.ws.state is ConnectionState.OPEN:
                self._write([self.ws.send(Pong(self.limits.pong))])
            self.limits.pong = None

    def pump(self, now: float | None = None) -> None:
        """Hand this subscriber's due frames to the socket (the per-frame path)."""
        if self.limits.pong is not None:
            self._answer_ping()
        sub = self.sub
        out = self.out
        if sub is None or self.life.state is not OPEN or out.queue or self.history_hold:
            return
        ctx = self.ctx
        hub = ctx.hub
        if now is None:
            now = ctx.clock.mono()
        while sub.ready:
            frames = hub.take(sub, now)
            if not frames:
                return
            ctx.stats.frames_sent += (count := len(frames))
            try:
                mine = hub.personal  # the first frames are this screen's alone: not cached
                if self.compressed:
                    if count == 1:
                        done = out.send_one(ctx.framed(frames[0], True, not mine))
                    else:
                        zs = [ctx.framed(f, True, i >= mine) for i, f in enumerate(frames)]
                        done = out.send(zs)
                elif count == 1 and len(frames[0]) <= _COPY_LIMIT:  # the fan-out fast path
                    done = out.send_one(ctx.framed(frames[0], False, not mine))
                else:
                    # large frames (joins): header + frame in one sendmsg, not concatenated
                    chunks: list[bytes] = []
                    for frame in frames:
                        chunks += (text_frame_header(len(frame)), frame)
                    done = self.out.send(chunks)
            except SendFailed as err:
                self._send_failed(err)
                return
            if not done:
                self._start_drain()
                return

    # -- reading ---------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self.fast_in:  # whole masked text frames, until anything else (inbound.py)
            limit = self.ctx.cfg.max_message_bytes
            data = text_frames(data, limit, self._on_message, lambda: self.closing)
            self.fast_in = not data
        if data:
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._on_event(event)
                if self._finished():
                    return
        self._answer_ping()
        if self.guard.in_frame or self._parts:
            if self.partial_since is None:
                self.partial_since = self.ctx.clock.mono()
        else:
            self.partial_since = None

    def _on_event(self, event: Event) -> None:
        limit = self.ctx.cfg.max_message_bytes
        if isinstance(event, TextMessage):
            if self.closing:
                return
            self._size += len(event.data.encode("utf-8", "surrogatepass"))
            if self._size > limit:
                self.ctx.stats.inbound_rejected["too_big"] += 1
                self.close(dc.TOO_BIG, f"messages are limited to {limit} bytes")
                return
            self._parts.append(event.data)
            if event.message_finished:
                text = "".join(self._parts)
                self._parts.clear()
                self._size = 0
                self._on_message(text)
        elif isinstance(event, BytesMessage):
            self.ctx.stats.inbound_rejected["binary"] += 1
            self.close(dc.BINARY)
        elif isinstance(event, Ping):
            if self._take_token():  # control frames count toward the message rate
                self.limits.pong = bytes(event.payload)
        elif isinstance(event, Pong):
            self._take_token()  # liveness is any received byte (last_rx)
        elif isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                if self.life.open:
                    self.life.to(CLOSING, "client_close")
                    self._unsubscribe()
                self.life.note("client_close")
                self._write([self.ws.send(event.response())])
            elif self.ws.state is ConnectionState.CLOSED:
                pass  # the answer to our own close frame
            else:  # wsproto could not parse a frame: answer with its code, and read no
                # more (its parser is done for good and would hold every later byte)
                self._read_scope.cancel()
                why = dc.by_code(event.code)
                if why is dc.TOO_BIG:  # wsproto says "error in extension": say which limit
                    self.ctx.stats.inbound_rejected["too_big"] += 1
                    self.close(why, f"messages are limited to {limit} bytes")
                else:
                    self.ctx.stats.inbound_rejected["bad_frame"] += 1
                    self.close(why, event.reason or None)

    def _take_token(self) -> bool:
        """Messages and control frames share one budget (ratelimit.py): the first over
        it is dropped with a ``rate_limited`` warning, another before it refills
        closes 4029. False: drop this one."""
        if self.closing:
            return False
        verdict = self.limits.take(self.ctx.clock.mono())
        if verdict == "ok":
            return True
        limit = f"more than {self.ctx.cfg.messages_per_s:g} messages per second"
        if verdict == "close":
            self.close(dc.RATE_LIMIT, limit)
        else:
            self._send_control(Error("rate_limited", f"{limit}: dropped; slow down"))
        return False

    def _on_message(self, text: str) -> None:
        self.partial_since = None  # a message came whole: the deadline is the next one's
        if not self._take_token():
            return
        try:
            self._dispatch(self.ctx.decode(text))
        except ProtocolError as err:
            self._error(err.code, err.message, err.ref)

    def _error(self, code: str, message: str, ref: str | None = None) -> None:
        ctx = self.ctx
        ctx.stats.inbound_rejected[code] += 1
        # the code only: the reply's message may quote what the client sent, and logs
        # never carry message bodies (docs/security.md)
        ctx.log.limited("protocol_error", "client %s: message refused: %s", self.ip, code)
        self.errors += 1
        if self.errors > ctx.cfg.max_protocol_errors:
            self.close(dc.TOO_MANY_ERRORS)
            return
        self._send_control(Error(code, message, ref))

    def _dispatch(self, msg: ClientMessage) -> None:
        ctx = self.ctx
        if isinstance(msg, AppPing):
            self._send_control(AppPong(msg.id, ctx.clock.wall()))
            return
        if isinstance(msg, Auth):
            self._authenticate(msg.token)
            return
        sub = self.sub
        if sub is None:
            raise ProtocolError("unauthorized", "send 'auth' with a token first")
        if ctx.walls is not None and ctx.walls.receive(self, msg):
            return  # a wall's report or action_ack (walls.py): no answer
        hub = ctx.hub
        reply: Ack | Error | None
        if isinstance(msg, Subscribe):
            reply = hub.subscribe(sub, msg)
        elif isinstance(msg, Unsubscribe):
            reply = hub.unsubscribe(sub, msg)
        elif isinstance(msg, Resume):
            reply = hub.resume(sub, msg)
        elif isinstance(msg, AckAlarm) and ctx.insight is not None and self.identity is not None:
            reply = ctx.insight.ack_alarm(self.identity, msg, (self._write_text, self.life))
        elif isinstance(msg, AckAlarm):
            reply = Error("unknown_alarm", "this gateway has no alarms", msg.id)
        else:  # pragma: no cover - the decode table has no other types
            raise ProtocolError("unknown_type", "unexpected message")
        if not isinstance(reply, Ack):  # an error, or None: forwarded, answered later
            if reply is not None:
                self._error(reply.code, reply.message, reply.ref)
            return
        self._send_control(reply)
        if (
            isinstance(msg, Subscribe)
            and msg.history_s
            and ctx.insight
            and self.identity
            and self._nursery is not None
        ):
            # history before the subscription's first state frame: pump waits
            self.history_hold += 1
            self._nursery.start_soon(self._send_history, msg)
            return
        self.pump_soon()

    async def _send_history(self, msg: Subscribe) -> None:
        """The subscription's history, one topic per checkpoint, then the live state."""
        assert self.ctx.insight is not None and self.identity is not None
        try:
            frames = self.ctx.insight.history_frames(self.identity, msg)
            await send_each(frames, self, msg.id)
        finally:
            self.history_hold -= 1
        self.pump_soon()

    def _authenticate(self, token: str) -> None:
        ctx = self.ctx
        if self.identity is not None:
            # authenticated at the upgrade, or no token needed: nothing to do (the
            # token is not checked), and not an error
            self._send_control(Ack("auth"))
            return
        try:
            identity = ctx.auth.verify(token, ctx.clock.wall())
        except AuthError as err:
            ctx.stats.auth_failures[err.reason] += 1
            self.close(dc.AUTH_FAILED, err.message)
            return
        self.identity = identity
        self.sub = ctx.hub.connect(identity.grants)
        ctx.attach(self)
        self._send_control(Ack("auth"))

    # -- timers (called by the sweep loop, fanout.py) ----------------------------------------

    def check_timers(self, now: float, wall: float) -> None:
        if not self.life.open:
            return
        cfg = self.ctx.cfg
        if self.identity is None:
            if now - self.opened_at > cfg.auth_timeout_s:
                self.close(dc.AUTH_TIMEOUT)
            return
        expires = self.identity.expires_at
        if expires is not None and wall > expires:
            self.close(dc.AUTH_FAILED, "token expired")
            return
        if self.partial_since is not None and now - self.partial_since > cfg.message_timeout_s:
            self.ctx.stats.inbound_rejected["incomplete"] += 1
            self.close(dc.INCOMPLETE)
            return
        if cfg.idle_timeout_s and now - self.last_rx > cfg.idle_timeout_s:
            self.close(dc.IDLE)
            return
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at > cfg.pong_timeout_s:
                self.abort("heartbeat")
        elif now - self.last_rx >= cfg.heartbeat_s and self.ws.state is ConnectionState.OPEN:
            self.ping_sent_at = now
            self._write([self.ws.send(Ping(b"hb"))])
