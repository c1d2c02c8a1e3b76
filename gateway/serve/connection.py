"""One accepted connection, from its first byte to the session it becomes.

Its place under the connection limits, its HTTP requests (keep-alive), and the
hand-off of ``/ws`` and ``/sse`` to a session."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable

import h11
import trio

from ..auth import AuthError, Identity
from ..config import Config
from ..core.rates import RateError
from .admission import Admission, forwarded_for
from .deflate import negotiate
from .fanout import FanOut
from .http import (
    HttpError,
    Request,
    ResponseCut,
    finish_request,
    new_connection,
    read_request,
    respond_raw_error,
    try_respond,
    websocket_accept,
)
from .routes import Routes
from .session import SessionContext
from .sockio import Outbound, SendFailed, close_socket, recv_some
from .sse import SseRequest, SseSession, parse_sse_request
from .stats import ServerStats
from .upgrade import MORE, Head, response_101, scan
from .ws import WsSession

__all__ = ["SUBPROTOCOLS", "Connections"]

log = logging.getLogger("gateway.server")

SUBPROTOCOLS = ("telemetry.v1",)
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def strict_upgrade(req: Request) -> tuple[int, str] | None:
    """RFC 6455 4.1: an upgrade is a GET in HTTP/1.1 with exactly one key and one
    version and no body; (status, message) of the refusal otherwise."""
    if req.method != "GET":
        return 405, "a WebSocket upgrade must be a GET"
    if req.http_version != b"1.1":
        return 400, "a WebSocket upgrade needs HTTP/1.1"
    if req.count(b"sec-websocket-key") != 1 or req.count(b"sec-websocket-version") != 1:
        return 400, "exactly one Sec-WebSocket-Key and one Sec-WebSocket-Version"
    if req.has_body:
        return 400, "a WebSocket upgrade has no body"
    return None


def _taken(
    buf: bytearray, data: bytes, searched: int
) -> tuple[Head | None, h11.Connection | None] | None:
    """What a public connection's first bytes make, ``data`` added to ``buf``: a
    ``GET /ws`` the fast path takes (upgrade.py), or an h11 connection holding every
    byte read so far (and the end of the stream, if the client closed: ``data`` is
    empty), for h11 to answer as it does any request; None: read more."""
    buf += data
    found = scan(buf, searched) if data else None
    if found is MORE:
        return None
    if isinstance(found, Head):
        return found, None
    conn = new_connection()
    conn.receive_data(bytes(buf))
    if not data:
        conn.receive_data(b"")
    return None, conn


async def _first_request(
    sock: socket.socket, buf: bytearray
) -> tuple[Head | None, h11.Connection | None]:
    """:func:`_taken` once enough has been read (``buf``: what was read already)."""
    while True:
        searched = len(buf)
        got = _taken(buf, await recv_some(sock), searched)
        if got is not None:
            return got


def _answering(head: Head | None) -> h11.Connection:
    """An h11 connection that has read ``head`` and may answer it (a refusal)."""
    assert head is not None
    conn = new_connection()
    conn.receive_data(head.raw)
    conn.next_event()  # the request: upgrade.py takes only what h11 accepts
    return conn


class Connections:
    """The handler of every accepted socket, public or admin."""

    def __init__(
        self,
        cfg: Config,
        stats: ServerStats,
        admission: Admission,
        routes: Routes,
        fanout: FanOut,
        session_ctx: SessionContext,
    ) -> None:
        self.cfg = cfg
        self.stats = stats
        self.admission = admission
        self.routes = routes
        self.fanout = fanout
        self.session_ctx = session_ctx
        #: plain-HTTP connections, cancelled at shutdown (streams close gracefully)
        self._http_scopes: set[trio.CancelScope] = set()

    def cancel_plain_http(self) -> None:
        for scope in list(self._http_scopes):
            scope.cancel()

    async def handle_public(self, sock: socket.socket, ip: str) -> None:
        await self._contained(self._http_connection(sock, ip, public=True))

    async def handle_admin(self, sock: socket.socket, ip: str) -> None:
        await self._contained(self._http_connection(sock, ip, public=False))

    async def _contained(self, handler: Awaitable[None]) -> None:
        """One connection's failure is logged and counted, never the server's."""
        try:
            await handler
        except SendFailed:  # a write outside a response (an early 503): the peer left
            self.stats.http_cut["client_gone"] += 1
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
                # the first request's deadline, whichever parser reads it (then the
                # idle wait of each later one)
                first_by = trio.current_time() + sc.handshake_timeout_s
                conn: h11.Connection | None = None  # h11's, for any request not fast
                head: Head | None = None  # a `GET /ws` taken by the fast path (upgrade.py)
                if public:
                    buf = bytearray()
                    await self.session_ctx.turns.wait()  # its turn (turns.py)
                    try:  # in a reconnect storm the request waited in the backlog: no wait,
                        got = _taken(buf, sock.recv(65536), 0)  # and no deadline to set
                    except (BlockingIOError, InterruptedError):
                        got = None
                    except OSError:
                        return
                    if got is None:
                        with trio.move_on_at(first_by) as deadline:
                            try:
                                got = await _first_request(sock, buf)
                            except OSError:
                                return
                        if deadline.cancelled_caught or got is None:
                            self.stats.handshake_rejected["timeout"] += 1
                            return
                        # read after a wait: handled in turn too (accepted before their
                        # requests came, a wave's upgrades ran 75 to a batch, 62 ms)
                        await self.session_ctx.turns.wait()
                    head, conn = got
                    del buf
                else:
                    conn = new_connection()
                cap = sc.max_requests_per_connection
                for n in range(1, cap + 1):  # keep-alive; the idle wait: handshake_timeout_s
                    body = b""  # a POST's (walls.py), up to MAX_BODY_BYTES
                    if head is not None:
                        req: Request | None = head.request
                    else:
                        assert conn is not None
                        if n > 1:
                            first_by = trio.current_time() + sc.handshake_timeout_s
                        with trio.move_on_at(first_by) as deadline:
                            try:
                                req = await read_request(sock, conn)
                                if req is not None and not (public and req.path in ("/ws", "/sse")):
                                    # h11 resets only then
                                    body = await finish_request(sock, conn, req.method == "POST")
                            except HttpError as err:
                                self.stats.handshake_rejected[err.reason] += 1
                                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                                    await try_respond(out, conn, err.status, err.message)
                                return
                            except OSError:
                                return
                        if deadline.cancelled_caught:
                            if n == 1:  # an idle keep-alive connection is not a refusal
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
                            conn = conn or _answering(head)  # only a refusal needs h11
                            await try_respond(out, conn, 503, "connection limit (per_ip) reached")
                            return
                        per_ip_key = ip
                        admission.hold_ip(ip)
                    if public and req.path == "/ws":
                        session = await self._upgrade(sock, out, conn, head, req, ip)
                        # registered (or refused) with no checkpoint since: shutdown
                        # cancels it here until now, and closes it gracefully from now on
                        self._http_scopes.discard(scope)
                        # the HTTP state is done with: an idle connection must not
                        # keep the parser's buffers and the request headers alive
                        del conn, req, head
                        if session is not None:
                            await session.run()
                        return
                    assert conn is not None  # only a `GET /ws` is read without h11
                    if public and req.path == "/sse":
                        stream = await self._event_stream(sock, out, conn, req, ip)
                        self._http_scopes.discard(scope)  # as for /ws
                        del conn, req
                        if stream is not None:
                            await stream.run()
                        return
                    last = [(b"connection", b"close")] if n == cap else None
                    try:
                        await self.routes.route(out, conn, req, public, last, body)
                    except ResponseCut as err:
                        self.stats.http_cut[err.reason] += 1
                        # reset, not FIN: the kernel drops what the peer did not read
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                        admission.log.limited("http_cut", "response to %s cut: %s", ip, err.reason)
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
        if req.method != "GET":  # a POST was served as a stream (its body never read)
            self.stats.http_requests["method_not_allowed"] += 1
            await try_respond(out, conn, 405, "an event stream is a GET", req.method == "HEAD")
            return None

        def prepare(identity: Identity | None) -> tuple[Identity, SseRequest]:
            if identity is None:  # no auth message on a one-way stream
                raise AuthError("malformed", "a token is required (header or access_token)")
            limit = self.cfg.state.max_topic_bytes
            sse = parse_sse_request(req.target, req.header(b"last-event-id"), limit)
            hub = self.session_ctx.hub
            outside = hub.outside_grants(identity.grants, sse.filters)
            if outside is not None:  # refused here, as a bad filter: EventSource stops
                raise HttpError(
                    403, f"filter {outside!r} is outside this identity's grants", "forbidden"
                )
            most = min(hub.config.max_filters_per_connection, hub.config.max_groups_per_connection)
            if len(set(sse.filters)) > most:
                raise HttpError(400, f"at most {most} filters per connection", "bad_request")
            if sse.rate_hz is not None:
                try:
                    self.session_ctx.hub.rates.snap(sse.rate_hz)  # refused here: EventSource stops
                except RateError as err:
                    raise HttpError(400, f"bad rate: {err}", "bad_request") from None
            return identity, sse

        async def refuse(status: int, message: str) -> None:
            await try_respond(out, conn, status, message)

        admitted = await self.admission.admit(refuse, req, ip, "event stream", prepare)
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
        conn: h11.Connection | None,
        head: Head | None,
        req: Request,
        ip: str,
    ) -> WsSession | None:
        """``/ws``: read by h11 (``conn``) or by the fast path (``head``)."""

        async def refuse(status: int, message: str, head_only: bool = False) -> None:
            await try_respond(out, conn or _answering(head), status, message, head_only)

        if not req.wants_websocket:
            self.stats.handshake_rejected["not_websocket"] += 1
            await refuse(426, "this endpoint speaks WebSocket only")
            return None
        refusal = strict_upgrade(req)
        if refusal is not None:
            self.stats.handshake_rejected["bad_upgrade"] += 1
            await refuse(*refusal, head_only=req.method == "HEAD")
            return None
        if conn is not None:
            # no body (checked): the end of the request is in h11's buffer already
            with trio.move_on_after(self.cfg.server.handshake_timeout_s):
                try:
                    await finish_request(sock, conn)
                except (HttpError, OSError):
                    return None
            trailing = bytes(conn.trailing_data[0])
        else:
            assert head is not None
            trailing = head.trailing
        admitted = await self.admission.admit(
            refuse, req, ip, "WebSocket", lambda i: (i, websocket_accept(req, SUBPROTOCOLS))
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
        session = WsSession(self.session_ctx, sock, out, ip, identity, trailing, deflate)
        # the 101 goes out with the session's first write (the welcome, or a close
        # decided before it), in one sendmsg; the stream is registered (shutdown sees
        # it) at once
        session.opener = response_101(headers)
        self.fanout.register(session)
        return session
