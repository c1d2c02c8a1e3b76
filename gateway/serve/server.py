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

import collections
import errno
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import h11
import trio

from ..auth import Authenticator, AuthError, Identity, extract_token
from ..clock import Clock
from ..config import Config
from ..core.hub import Hub
from ..core.protocol import ClientMessage, DecodeLimits, decode_client
from ..core.state import StateStore
from ..core.topics import TopicError, matches, validate_filter
from ..log import RateLimitedLog
from ..metrics import Metrics
from ..wall import load_wall
from .deflate import deflate_frame, negotiate
from .http import (
    HttpError,
    Request,
    json_body,
    new_connection,
    read_request,
    respond,
    respond_raw_error,
    static_file,
    websocket_accept,
)
from .session import StreamSession
from .sockio import Outbound, close_socket, text_frame_header
from .sse import SseRequest, SseSession, parse_sse_request
from .ws import WsSession

__all__ = ["Server", "ServerStats"]

_T = TypeVar("_T")

log = logging.getLogger("gateway.server")

SUBPROTOCOLS = ("telemetry.v1",)
SWEEP_INTERVAL_S = 0.5


@dataclass
class ServerStats:
    """Counters the metrics collector reads at scrape time."""

    connections_opened: int = 0
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)
    send_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    handshake_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    auth_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    inbound_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    http_requests: collections.Counter[str] = field(default_factory=collections.Counter)
    frames_sent: int = 0
    bytes_sent: int = 0
    internal_errors: int = 0  # connection handlers that failed (a bug: see the log)
    ticks: int = 0

    def send_failure(self, reason: str) -> None:
        self.send_failures[reason] += 1


ReadyCheck = Callable[[], tuple[bool, str]]


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
        self.metrics_handler = metrics.exposition if metrics is not None else None
        self.ready_checks: dict[str, ReadyCheck] = {}
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
        self._framed: dict[int, tuple[bytes, bytes]] = {}
        self._framed_z: dict[int, tuple[bytes, bytes]] = {}
        self._sse_events: dict[int, tuple[bytes, bytes]] = {}
        self._sessions: set[StreamSession] = set()
        self._by_sub: dict[int, StreamSession] = {}
        self._http_scopes: set[trio.CancelScope] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._open = 0
        self._trusted_proxies = frozenset(sc.trusted_proxies)
        self._accept_bucket = (float(sc.max_new_connections_per_s), 0.0)  # (tokens, when)
        self._shutdown = trio.Event()
        self._drained = trio.Event()
        self.stopped = trio.Event()  # set when serve() has returned
        self._stopping = False
        root = sc.dashboard_dir or str(Path(__file__).resolve().parents[2] / "dashboard")
        self.dashboard_root = Path(root)
        self.wall_body = load_wall(sc.wall_file)  # /api/wall (checked by load_config)

    # -- registry (used by sessions) ---------------------------------------------------

    def _session_failed(self, session: StreamSession) -> None:
        self.stats.internal_errors += 1
        log.exception("a session failed in the tick or sweep loop; dropping it")
        try:
            session.abort("error")
        except Exception:
            log.exception("and dropping it failed too")

    def attach(self, session: StreamSession) -> None:
        assert session.sub is not None
        self._by_sub[session.sub.id] = session

    def detach(self, session: StreamSession) -> None:
        if session.sub is not None:
            self._by_sub.pop(session.sub.id, None)
        if session in self._sessions:
            self._sessions.discard(session)
            self.stats.disconnects[session.reason or "error"] += 1
        if self._stopping and not self._sessions:
            self._drained.set()

    def framed(self, frame: bytes, compressed: bool = False) -> bytes:
        """``frame`` as a WebSocket text frame, deflated if ``compressed``. Shared
        frames are framed (and compressed) once per tick: the caches are keyed by the
        frame object and cleared every tick (and when large), so an id is never reused
        while its entry lives."""
        cache = self._framed_z if compressed else self._framed
        entry = cache.get(id(frame))
        if entry is not None and entry[0] is frame:
            return entry[1]
        data = deflate_frame(frame) if compressed else text_frame_header(len(frame)) + frame
        if len(cache) >= 256:
            cache.clear()
        cache[id(frame)] = (frame, data)
        return data

    def decode(self, text: str) -> ClientMessage:
        return decode_client(text, self._limits)

    @property
    def connections(self) -> int:
        return len(self._sessions)

    # -- lifecycle ---------------------------------------------------------------------

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sc = self.cfg.server
        public = _listen(sc.host, sc.port)
        admin = _listen(sc.admin_host, sc.admin_port)
        self.ports = (public.getsockname()[1], admin.getsockname()[1])
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as services:
                    services.start_soon(self._accept_loop, public, connections, self._handle_public)
                    services.start_soon(self._accept_loop, admin, connections, self._handle_admin)
                    services.start_soon(self._tick_loop)
                    services.start_soon(self._sweep_loop)
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
        self._stopping = True
        for scope in list(self._http_scopes):
            scope.cancel()
        for session in list(self._sessions):
            session.close(1012, "service restart: reconnect", "shutdown")
        if self._sessions:
            with trio.move_on_after(self.cfg.server.shutdown_timeout_s):
                await self._drained.wait()
        if self._sessions:
            log.warning(
                "shutdown: %d connections still open at the deadline; dropping them",
                len(self._sessions),
            )
        else:
            log.info("shutdown: every client was told to reconnect (1012)")

    async def _accept_loop(
        self,
        listener: socket.socket,
        nursery: trio.Nursery,
        handler: Callable[[socket.socket, str], Awaitable[None]],
    ) -> None:
        sndbuf = self.cfg.server.send_buffer_bytes
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    sock, addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as err:
                    if err.errno == errno.ECONNABORTED:
                        continue
                    # EMFILE, ENFILE, ENOBUFS, ENOMEM and anything else: back off, go on
                    self.log.limited("accept", "accept failed: %s; pausing 100 ms", err)
                    await trio.sleep(0.1)
                    break
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if sndbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                nursery.start_soon(handler, sock, addr[0])

    async def _tick_loop(self) -> None:
        """Tick at ``tick_hz`` while there is work; sleep while nothing changes."""
        interval = 1.0 / self.cfg.server.tick_hz
        hub = self.hub
        by_sub = self._by_sub
        work = trio.Event()

        def wake() -> None:
            work.set()

        self.store.on_change = wake
        next_at = last = -math.inf
        while True:
            if hub.idle:
                await work.wait()
                work = trio.Event()
                # The first change after a quiet spell goes out at once, but never
                # sooner than one interval after the previous tick: with sparse
                # changes the hub goes idle after every tick, and waking it at each
                # change would tick (and send) far more often than tick_hz.
                next_at = max(last + interval, trio.current_time())
            else:
                next_at += interval
                now = trio.current_time()
                if next_at < now - interval:
                    next_at = now  # fell behind (overload): skip ticks rather than burst
            await trio.sleep_until(next_at)
            start = last = trio.current_time()
            self._framed.clear()
            self._framed_z.clear()
            self._sse_events.clear()
            for sub in hub.tick(start):
                session = by_sub.get(sub.id)
                if session is not None:
                    try:
                        session.pump(start)
                    except Exception:  # one session's bug must not stop every screen
                        self._session_failed(session)
            self.stats.ticks += 1
            if self.metrics is not None:
                self._observe_tick(start)

    def _observe_tick(self, start: float) -> None:
        m = self.metrics
        assert m is not None
        m.tick_seconds.observe(trio.current_time() - start)
        states = self.hub.tick_states
        if states:
            wall = self.clock.wall()
            for st in states.values():
                if st.device_ts is not None:
                    m.device_to_send.observe(max(0.0, wall - st.device_ts))
                m.ingest_to_send.observe(max(0.0, wall - st.changed_at))

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            now = self.clock.mono()
            wall = self.clock.wall()
            ages: list[float] | None = [] if self.metrics is not None else None
            for sub, why in self.hub.find_slow(now, ages):
                session = self._by_sub.get(sub.id)
                if session is not None:
                    self.log.limited("slow", "closing slow subscriber %s (%s)", session.ip, why)
                    if why == "stalled":
                        self.stats.send_failure("stalled")
                    session.close(4008, f"slow subscriber: {why}", "slow")
            if ages and self.metrics is not None:
                for age in ages:
                    self.metrics.subscriber_data_age.observe(age)
            for session in list(self._sessions):
                try:
                    session.check_timers(now, wall)
                except Exception:
                    self._session_failed(session)
            self.store.sweep_stale(wall)

    # -- connections ---------------------------------------------------------------------

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
        proxied = public and ip in self._trusted_proxies
        scope = trio.CancelScope()
        self._http_scopes.add(scope)
        try:
            with scope:
                if public:
                    which = None
                    if self._open >= sc.max_connections:
                        which = "total"
                    elif not proxied and self._per_ip[ip] >= sc.max_connections_per_ip:
                        which = "per_ip"
                    elif not self._accept_rate_ok():
                        which = "rate"
                    if which is not None:
                        self.stats.handshake_rejected[f"limit_{which}"] += 1
                        with trio.move_on_after(sc.close_timeout_s):
                            await respond_raw_error(out, 503, f"connection limit ({which}) reached")
                        return
                    self._open += 1
                    counted = True
                    if not proxied:  # behind a trusted proxy: the client's, once known
                        per_ip_key = ip
                        self._per_ip[ip] += 1
                conn = new_connection()
                for _ in range(100):  # keep-alive: at most 100 requests per connection
                    with trio.move_on_after(sc.handshake_timeout_s) as deadline:
                        try:
                            req = await read_request(sock, conn)
                        except HttpError as err:
                            self.stats.handshake_rejected[err.reason] += 1
                            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                                await _try_respond(out, conn, err.status, err.message)
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
                            req.header(b"x-forwarded-for"), ip, self._trusted_proxies
                        )
                        if self._per_ip[ip] >= sc.max_connections_per_ip:
                            self.stats.handshake_rejected["limit_per_ip"] += 1
                            await _try_respond(out, conn, 503, "connection limit (per_ip) reached")
                            return
                        per_ip_key = ip
                        self._per_ip[ip] += 1
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
                        await self._route(out, conn, req, public)
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
                self._open -= 1
            if per_ip_key is not None:
                self._per_ip[per_ip_key] -= 1
                if not self._per_ip[per_ip_key]:
                    del self._per_ip[per_ip_key]
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

        admitted = await self._admit(out, conn, req, ip, "event stream", prepare)
        if admitted is None:
            return None
        identity, sse_req = admitted
        session = SseSession(self, sock, out, ip, identity, sse_req)
        self._register(session)
        return session

    def sse_event(self, frame: bytes) -> bytes:
        """``frame`` as an SSE event, built once per tick for every stream (as
        :meth:`framed` does for WebSocket frames)."""
        entry = self._sse_events.get(id(frame))
        if entry is not None and entry[0] is frame:
            return entry[1]
        data = b"data: " + frame + b"\n\n"
        if len(self._sse_events) >= 256:
            self._sse_events.clear()
        self._sse_events[id(frame)] = (frame, data)
        return data

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
            await _try_respond(out, conn, 426, "this endpoint speaks WebSocket only")
            return None
        admitted = await self._admit(
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
        session = WsSession(self, sock, out, ip, identity, bytes(trailing), deflate)
        if not out.send([data]):
            with trio.move_on_after(self.cfg.server.handshake_timeout_s):
                await out.drain()
        self._register(session)
        return session

    async def _admit(
        self,
        out: Outbound,
        conn: h11.Connection,
        req: Request,
        ip: str,
        what: str,
        prepare: Callable[[Identity | None], _T],
    ) -> _T | None:
        """The checks every stream passes before it opens (Origin, then the token and
        the endpoint's own, in ``prepare``); each refusal answered and counted."""
        stats = self.stats
        if not self._origin_allowed(req):
            stats.handshake_rejected["origin"] += 1
            self.log.limited("origin", "refused %s from %s: Origin not allowed", what, ip)
            await _try_respond(out, conn, 403, "Origin not allowed")
            return None
        try:
            return prepare(self._identity(req))
        except AuthError as err:
            stats.auth_failures[err.reason] += 1
            stats.handshake_rejected["auth"] += 1
            await _try_respond(out, conn, 401, err.message)
        except HttpError as err:
            stats.handshake_rejected[err.reason] += 1
            await _try_respond(out, conn, err.status, err.message)
        return None

    def _register(self, session: StreamSession) -> None:
        self.stats.connections_opened += 1
        self._sessions.add(session)
        if self._stopping:
            session.close(1012, "service restart: reconnect", "shutdown")

    def _accept_rate_ok(self) -> bool:
        """Token bucket on new public connections (``max_new_connections_per_s``)."""
        rate = self.cfg.server.max_new_connections_per_s
        if not rate:
            return True
        now = self.clock.mono()
        tokens, at = self._accept_bucket
        tokens = min(rate, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._accept_bucket = (tokens, now)
            return False
        self._accept_bucket = (tokens - 1.0, now)
        return True

    def _identity(self, req: Request) -> Identity | None:
        token = extract_token(req.headers, req.target)
        if token is not None:
            return self.auth.verify(token, self.clock.wall())
        if not self.auth.required:
            return self.auth.verify("", self.clock.wall())
        return None  # must send an 'auth' message before the auth deadline

    def _origin_allowed(self, req: Request) -> bool:
        sc = self.cfg.server
        origin = req.header(b"origin")
        if origin is None:
            return sc.allow_missing_origin
        text = origin.decode("ascii", "replace")
        if "*" in sc.allowed_origins or text in sc.allowed_origins:
            return True
        host = req.header(b"host")
        if host is not None and text in (
            f"http://{host.decode('ascii', 'replace')}",
            f"https://{host.decode('ascii', 'replace')}",
        ):
            return True
        scheme, _, rest = text.partition("://")
        hostname = rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest.split("]")[0] + "]"
        return scheme in ("http", "https") and hostname in ("localhost", "127.0.0.1", "[::1]")

    # -- plain HTTP ------------------------------------------------------------------------

    async def _route(self, out: Outbound, conn: h11.Connection, req: Request, public: bool) -> None:
        stats = self.stats
        head = req.method == "HEAD"
        if req.method not in ("GET", "HEAD"):
            stats.http_requests["method_not_allowed"] += 1
            await respond(out, conn, 405, b"only GET and HEAD", headers=[(b"allow", b"GET, HEAD")])
            return
        path = req.path
        if path == "/healthz":
            stats.http_requests["healthz"] += 1
            await respond(out, conn, 200, b"ok\n", head_only=head)
            return
        if path == "/readyz":
            stats.http_requests["readyz"] += 1
            ready, detail = self.readiness()
            await respond(
                out,
                conn,
                200 if ready else 503,
                json_body(detail),
                b"application/json",
                head_only=head,
            )
            return
        if not public:
            if path == "/metrics" and self.metrics_handler is not None:
                stats.http_requests["metrics"] += 1
                body, ctype = self.metrics_handler()
                await respond(out, conn, 200, body, ctype, head_only=head)
                return
            stats.http_requests["not_found"] += 1
            listing = b"/metrics /healthz /readyz" if self.metrics_handler else b"/healthz /readyz"
            await respond(out, conn, 404, b"admin endpoints: " + listing + b"\n")
            return
        if path in ("/api/topics", "/api/snapshot"):
            stats.http_requests[path.rsplit("/", 1)[1]] += 1
            status, body = self._api(req, full=path == "/api/snapshot")
            await respond(out, conn, status, body, b"application/json", head_only=head)
            return
        if path == "/api/wall":  # the wall's layout: not secret, like the dashboard files
            stats.http_requests["wall"] += 1
            await respond(out, conn, 200, self.wall_body, b"application/json", head_only=head)
            return
        found = static_file(self.dashboard_root, path)
        if found is None:
            stats.http_requests["not_found"] += 1
            await respond(out, conn, 404, b"not found\n", head_only=head)
            return
        stats.http_requests["static"] += 1
        await respond(out, conn, 200, found[0], found[1], head_only=head)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        checks = {name: check() for name, check in self.ready_checks.items()}
        ready = not self._stopping and all(ok for ok, _ in checks.values())
        return ready, {
            "ready": ready,
            "stopping": self._stopping,
            "checks": {name: {"ok": ok, "detail": why} for name, (ok, why) in checks.items()},
        }

    def _api(self, req: Request, full: bool) -> tuple[int, bytes]:
        try:
            identity = self._identity(req)
        except AuthError as err:
            self.stats.auth_failures[err.reason] += 1
            return 401, json_body({"error": "unauthorized", "message": err.message})
        if identity is None:
            return 401, json_body({"error": "unauthorized", "message": "a token is required"})
        try:
            flt = validate_filter(req.query.get("filter", "#"), self.cfg.state.max_topic_bytes)
        except TopicError as err:
            return 400, json_body({"error": "bad_filter", "message": str(err)})
        grants = identity.grants
        out: dict[str, object] = {}
        for st in self.store.states():
            if not st.seq or not matches(flt, st.topic):
                continue
            if grants is not None and not any(matches(g, st.topic) for g in grants):
                continue
            entry: dict[str, object] = {
                "seq": st.seq,
                "online": st.online,
                "stale": st.stale,
                "ts": st.device_ts,
                "rx": st.changed_at,
            }
            if full:
                entry["fields"] = st.fields
            out[st.topic] = entry
        return 200, json_body({"epoch": self.store.epoch, "filter": flt, "topics": out})


def forwarded_for(header: bytes | None, peer: str, trusted: frozenset[str]) -> str:
    """The client's address behind trusted proxies: the rightmost X-Forwarded-For entry
    that is not itself a trusted proxy (entries further left could be forged by the
    client); the peer's own address when the header is missing or malformed."""
    if not header:
        return peer
    for part in reversed(header.decode("latin-1").split(",")):
        candidate = part.strip()
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            return peer
        if candidate not in trusted:
            return candidate
    return peer


async def _try_respond(out: Outbound, conn: h11.Connection, status: int, message: str) -> None:
    try:
        with trio.move_on_after(2.0):
            await respond(
                out, conn, status, message.encode() + b"\n", headers=[(b"connection", b"close")]
            )
    except (OSError, h11.LocalProtocolError):
        pass
    except Exception as err:
        log.debug("could not send %d: %r", status, err)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock
