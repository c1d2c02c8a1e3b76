"""The public listener (WebSocket at /ws, events at /sse, dashboard, REST, health) and
the admin one.

Task ownership (every task has an owner):

    serve()
    ├── connections nursery: one handler task per accepted socket
    │     └── WsSession / SseSession nursery (StreamSession, session.py): a drain
    │         task only while the socket is full
    └── services nursery: accept loops (public, admin), tick loop, sweep loop

Shutdown (``request_shutdown``, wired to SIGTERM/SIGINT by the app): the services
nursery is cancelled (no more accepts, no more ticks), every stream gets close 1012
"service restart" (an SSE stream as a last ``close`` event), plain HTTP connections
are cancelled, and the connections nursery gets ``shutdown_timeout_s`` to finish
before it is cancelled too.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable
from typing import TypeVar

import h11
import trio

from ..auth import Authenticator, AuthError, Identity
from ..clock import Clock
from ..config import Config
from ..core.hub import Hub
from ..core.protocol import ClientMessage, DecodeLimits, decode_client
from ..core.state import StateStore
from ..log import RateLimitedLog
from ..metrics import Metrics
from .admission import Admission, accept_loop, forwarded_for, listen
from .deflate import negotiate
from .fanout import FanOut
from .http import (
    HttpError,
    Request,
    new_connection,
    read_request,
    respond_raw_error,
    try_respond,
    websocket_accept,
)
from .routes import Routes
from .session import SessionContext, StreamSession
from .sockio import Outbound, close_socket
from .sse import SseRequest, SseSession, parse_sse_request
from .stats import ServerStats
from .ws import WsSession

__all__ = ["Server", "ServerStats"]

_T = TypeVar("_T")

log = logging.getLogger("gateway.server")

SUBPROTOCOLS = ("telemetry.v1",)


class Server:
    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        hub: Hub,
        auth: Authenticator,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.hub = hub
        self.auth = auth
        self.clock = clock
        self.stats = ServerStats()
        self.log = RateLimitedLog(log)
        self.metrics = metrics
        self.ports: tuple[int, int] | None = None
        sc = cfg.server
        self.welcome_limits = {
            "max_message_bytes": sc.max_message_bytes,
            "max_subscriptions": sc.max_subscriptions,
            "max_filters": 64,
            "max_rate_hz": sc.tick_hz,
            "default_rate_hz": sc.default_rate_hz,
            "auth_deadline_s": sc.auth_timeout_s,
            "messages_per_s": sc.messages_per_s,
        }
        self._limits = DecodeLimits(max_topic_bytes=cfg.state.max_topic_bytes)
        self.fanout = FanOut(sc, store, hub, clock, self.stats, self.log, metrics)
        self._http_scopes: set[trio.CancelScope] = set()
        self.admission = Admission(sc, auth, clock, self.stats, self.log)
        self._shutdown = trio.Event()
        self.stopped = trio.Event()  # set when serve() has returned
        self.routes = Routes(
            cfg,
            store,
            self.stats,
            self.admission.identity,
            lambda: self.fanout.stopping,
            metrics.exposition if metrics is not None else None,
        )
        #: name -> check; the gateway is ready when every one is (app.py adds "mqtt")
        self.ready_checks = self.routes.ready_checks
        self.session_ctx = SessionContext(
            cfg=sc,
            hub=hub,
            store=store,
            clock=clock,
            auth=auth,
            stats=self.stats,
            log=self.log,
            welcome_limits=self.welcome_limits,
            decode=self.decode,
            framed=self.fanout.framed,
            sse_event=self.fanout.sse_event,
            attach=self.fanout.attach,
            detach=self.fanout.detach,
        )

    # -- registry (used by sessions) ---------------------------------------------------

    def decode(self, text: str) -> ClientMessage:
        return decode_client(text, self._limits)

    @property
    def connections(self) -> int:
        return len(self.fanout.sessions)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        return self.routes.readiness()

    @property
    def _open(self) -> int:
        return self.admission.open

    @property
    def _sessions(self) -> set[StreamSession]:
        return self.fanout.sessions

    # -- lifecycle ---------------------------------------------------------------------

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sc = self.cfg.server
        public = listen(sc.host, sc.port)
        admin = listen(sc.admin_host, sc.admin_port)
        self.ports = (public.getsockname()[1], admin.getsockname()[1])
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as services:
                    sndbuf = sc.send_buffer_bytes
                    services.start_soon(
                        accept_loop, public, connections, self._handle_public, sndbuf, self.log
                    )
                    services.start_soon(
                        accept_loop, admin, connections, self._handle_admin, sndbuf, self.log
                    )
                    services.start_soon(self.fanout.tick_loop)
                    services.start_soon(self.fanout.sweep_loop)
                    task_status.started(self.ports)
                    await self._shutdown.wait()
                    services.cancel_scope.cancel()
                await self._drain_connections()
                connections.cancel_scope.cancel()
        finally:
            close_socket(public)
            close_socket(admin)
            self.stopped.set()

    async def _drain_connections(self) -> None:
        self.fanout.stopping = True
        for scope in list(self._http_scopes):
            scope.cancel()
        await self.fanout.close_all()

    async def _handle_public(self, sock: socket.socket, ip: str) -> None:
        await self._contained(self._http_connection(sock, ip, public=True))

    async def _handle_admin(self, sock: socket.socket, ip: str) -> None:
        await self._contained(self._http_connection(sock, ip, public=False))

    async def _contained(self, handler: Awaitable[None]) -> None:
        """One connection's failure is logged and counted, never the server's."""
        try:
            await handler
        except Exception:
            self.stats.internal_errors += 1
            log.exception("connection handler failed (the server goes on)")

    async def _http_connection(self, sock: socket.socket, ip: str, *, public: bool) -> None:
        sc = self.cfg.server
        out = Outbound(sock, self.stats)
        counted = False
        per_ip_key: str | None = None  # the address counted against max_connections_per_ip
        admission = self.admission
        proxied = public and ip in admission.trusted_proxies
        scope = trio.CancelScope()
        self._http_scopes.add(scope)
        try:
            with scope:
                if public:
                    which = admission.refusal(ip, proxied)
                    if which is not None:
                        self.stats.handshake_rejected[f"limit_{which}"] += 1
                        with trio.move_on_after(sc.close_timeout_s):
                            await respond_raw_error(out, 503, f"connection limit ({which}) reached")
                        return
                    admission.open += 1
                    counted = True
                    if not proxied:  # behind a trusted proxy: the client's, once known
                        per_ip_key = ip
                        admission.hold_ip(ip)
                conn = new_connection()
                for _ in range(100):  # keep-alive: at most 100 requests per connection
                    with trio.move_on_after(sc.handshake_timeout_s) as deadline:
                        try:
                            req = await read_request(sock, conn)
                        except HttpError as err:
                            self.stats.handshake_rejected[err.reason] += 1
                            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                                await try_respond(out, conn, err.status, err.message)
                            return
                        except OSError:
                            return
                    if deadline.cancelled_caught:
                        self.stats.handshake_rejected["timeout"] += 1
                        return
                    if req is None:
                        return
                    if proxied and per_ip_key is None:
                        ip = forwarded_for(
                            req.header(b"x-forwarded-for"), ip, admission.trusted_proxies
                        )
                        if admission.per_ip_full(ip):
                            self.stats.handshake_rejected["limit_per_ip"] += 1
                            await try_respond(out, conn, 503, "connection limit (per_ip) reached")
                            return
                        per_ip_key = ip
                        admission.hold_ip(ip)
                    if public and req.path == "/ws":
                        self._http_scopes.discard(scope)  # sessions close gracefully instead
                        session = await self._upgrade(sock, out, conn, req, ip)
                        # the HTTP state is done with: an idle connection must not
                        # keep the parser's buffers and the request headers alive
                        del conn, req
                        if session is not None:
                            await session.run()
                        return
                    if public and req.path == "/sse":
                        self._http_scopes.discard(scope)
                        stream = await self._event_stream(sock, out, conn, req, ip)
                        del conn, req
                        if stream is not None:
                            await stream.run()
                        return
                    try:
                        await self.routes.route(out, conn, req, public)
                    except OSError:
                        return
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    try:
                        conn.start_next_cycle()
                    except h11.LocalProtocolError:
                        return
        finally:
            self._http_scopes.discard(scope)
            if counted:
                admission.open -= 1
            if per_ip_key is not None:
                admission.release_ip(per_ip_key)
            close_socket(sock)

    async def _event_stream(
        self,
        sock: socket.socket,
        out: Outbound,
        conn: h11.Connection,
        req: Request,
        ip: str,
    ) -> SseSession | None:
        """``/sse``: the same checks as the WebSocket upgrade, then an event stream."""

        def prepare(identity: Identity | None) -> tuple[Identity, SseRequest]:
            if identity is None:  # no auth message on a one-way stream
                raise AuthError("malformed", "a token is required (header or access_token)")
            limit = self.cfg.state.max_topic_bytes
            return identity, parse_sse_request(req.target, req.header(b"last-event-id"), limit)

        admitted = await self.admission.admit(out, conn, req, ip, "event stream", prepare)
        if admitted is None:
            return None
        identity, sse_req = admitted
        session = SseSession(self.session_ctx, sock, out, ip, identity, sse_req)
        self.fanout.register(session)
        return session

    async def _upgrade(
        self,
        sock: socket.socket,
        out: Outbound,
        conn: h11.Connection,
        req: Request,
        ip: str,
    ) -> WsSession | None:
        if not req.wants_websocket:
            self.stats.handshake_rejected["not_websocket"] += 1
            await try_respond(out, conn, 426, "this endpoint speaks WebSocket only")
            return None
        admitted = await self.admission.admit(
            out, conn, req, ip, "WebSocket", lambda i: (i, websocket_accept(req, SUBPROTOCOLS))
        )
        if admitted is None:
            return None
        identity, headers = admitted
        deflate = None
        if self.cfg.server.compression:
            offer = req.header(b"sec-websocket-extensions")
            negotiated = negotiate(offer, self.cfg.server.max_message_bytes)
            if negotiated is not None:
                answer, deflate = negotiated
                headers.append((b"sec-websocket-extensions", answer))
        data = conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b""
        trailing, _closed = conn.trailing_data
        session = WsSession(self.session_ctx, sock, out, ip, identity, bytes(trailing), deflate)
        if not out.send([data]):
            with trio.move_on_after(self.cfg.server.handshake_timeout_s):
                await out.drain()
        self.fanout.register(session)
        return session
