"""Admission: who may connect, and who may open a stream.

The listening sockets and the accept loop, the connection limits (total, per address,
new per second), the client's address behind trusted proxies, the Origin rule, the
token, and the checks a stream passes before it opens."""

from __future__ import annotations

import collections
import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..auth import Authenticator, AuthError, Identity, extract_token
from ..clock import Clock
from ..config import ServerConfig
from ..log import RateLimitedLog
from .http import HttpError, Request
from .stats import ServerStats

__all__ = ["BACKLOG", "Admission", "accept_loop", "bind", "forwarded_for", "listen"]

#: connections the kernel queues before we accept them: a restart's reconnect storm
#: (thousands of screens within a second) waits there (the kernel caps it at
#: net.core.somaxconn)
BACKLOG = 4096
#: connections accepted between two event-loop checkpoints
ACCEPT_BATCH = 64
#: or this long (in a join wave's late loop-lag samples its steps took 2.8 to 7 ms)
ACCEPT_TURN_S = 0.001

_T = TypeVar("_T")


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound socket, not listening yet (clear error if the address is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket; ``reuse_port``: one of several processes sharing the port
    (SO_REUSEPORT: the kernel spreads new connections over them, gateway/cluster)."""
    sock = bind(host, port, reuse_port=reuse_port)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def accept_loop(
    listener: socket.socket,
    nursery: trio.Nursery,
    handler: Callable[[socket.socket, str], Awaitable[None]],
    send_buffer_bytes: int,
    rlog: RateLimitedLog,
) -> None:
    """Accept everything pending at each wake-up, ``ACCEPT_BATCH`` at a time or for
    ``ACCEPT_TURN_S`` (the clock read every 8 accepts) with an event-loop checkpoint
    between batches; one ``handler`` task per socket."""
    while True:
        await trio.lowlevel.wait_readable(listener)
        batch = 0
        turn_ends = trio.current_time() + ACCEPT_TURN_S
        while True:
            if batch == ACCEPT_BATCH or (
                batch and not batch & 7 and trio.current_time() >= turn_ends
            ):
                # a reconnect storm (thousands queued in the backlog after a restart):
                # the tick, the ingest and the new sessions' first steps run between
                # batches instead of waiting for every pending connection's task
                batch = 0
                await trio.lowlevel.checkpoint()
                turn_ends = trio.current_time() + ACCEPT_TURN_S
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                if err.errno == errno.ECONNABORTED:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM and anything else: back off, go on
                rlog.limited("accept", "accept failed: %s; pausing 100 ms", err)
                await trio.sleep(0.1)
                break
            batch += 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if send_buffer_bytes:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
            nursery.start_soon(handler, sock, addr[0])


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


_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def _hostname(authority: str) -> str:
    """``host`` of ``host[:port]`` (an IPv6 ``[address]`` kept in its brackets); "" for
    what an Origin cannot be (RFC 6454 serializes one as ``scheme://host[:port]``):
    ``localhost:1@evil.example`` and ``[::1]@evil`` passed as loopback names (found by
    an outside check; browsers never send them, other clients may)."""
    if authority.startswith("["):
        host, _, port = authority.partition("]")
        host += "]"
    else:
        host, colon, port = authority.partition(":")
        port = colon + port
    if port and not (port[0] == ":" and port[1:].isdigit()):
        return ""
    return host


class Admission:
    """The public listener's limits and the checks every stream passes."""

    def __init__(
        self,
        cfg: ServerConfig,
        auth: Authenticator,
        clock: Clock,
        stats: ServerStats,
        rlog: RateLimitedLog,
    ) -> None:
        self.cfg = cfg
        self.auth = auth
        self.clock = clock
        self.stats = stats
        self.log = rlog
        self.open = 0  # public connections counted against max_connections
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.trusted_proxies = frozenset(cfg.trusted_proxies)
        self._accept_bucket = (float(cfg.max_new_connections_per_s), 0.0)  # (tokens, when)

    # -- connection limits -----------------------------------------------------------------

    def refusal(self, ip: str, proxied: bool) -> str | None:
        """Which limit a new public connection from ``ip`` exceeds, if any (the
        per-address limit waits for X-Forwarded-For when ``proxied``)."""
        cfg = self.cfg
        if self.open >= cfg.max_connections:
            return "total"
        if not proxied and self.per_ip[ip] >= cfg.max_connections_per_ip:
            return "per_ip"
        if not self._accept_rate_ok():
            return "rate"
        return None

    def per_ip_full(self, ip: str) -> bool:
        return self.per_ip[ip] >= self.cfg.max_connections_per_ip

    def hold_ip(self, ip: str) -> None:
        self.per_ip[ip] += 1

    def release_ip(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if not self.per_ip[ip]:
            del self.per_ip[ip]

    def _accept_rate_ok(self) -> bool:
        """Token bucket on new public connections (``max_new_connections_per_s``)."""
        rate = self.cfg.max_new_connections_per_s
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

    # -- who is asking -----------------------------------------------------------------------

    def identity(self, req: Request) -> Identity | None:
        token = extract_token(req.headers, req.target)
        if token is not None:
            return self.auth.verify(token, self.clock.wall())
        if not self.auth.required:
            return self.auth.verify("", self.clock.wall())
        return None  # must send an 'auth' message before the auth deadline

    def origin_allowed(self, req: Request) -> bool:
        """The Origin rule of ``/ws``, ``/sse`` and ``/api``: an origin listed in
        ``allowed_origins`` or ``public_origins``, or one on a loopback name. The Host
        header is never taken as the gateway's own origin: any name can be made to
        resolve to this address (DNS rebinding), so a page of evil.example would
        otherwise pass with ``Host: evil.example``."""
        sc = self.cfg
        origin = req.header(b"origin")
        if origin is None:
            return sc.allow_missing_origin
        text = origin.decode("ascii", "replace")
        if "*" in sc.allowed_origins or text in sc.allowed_origins or text in sc.public_origins:
            return True
        scheme, _, rest = text.partition("://")
        return scheme in ("http", "https") and _hostname(rest) in _LOOPBACK

    async def admit(
        self,
        refuse: Callable[[int, str], Awaitable[None]],
        req: Request,
        ip: str,
        what: str,
        prepare: Callable[[Identity | None], _T],
    ) -> _T | None:
        """The checks every stream passes before it opens (Origin, then the token and
        the endpoint's own, in ``prepare``); each refusal answered (``refuse``: status,
        message) and counted."""
        stats = self.stats
        if not self.origin_allowed(req):
            stats.handshake_rejected["origin"] += 1
            self.log.limited("origin", "refused %s from %s: Origin not allowed", what, ip)
            await refuse(403, "Origin not allowed")
            return None
        try:
            return prepare(self.identity(req))
        except AuthError as err:
            stats.auth_failures[err.reason] += 1
            stats.handshake_rejected["auth"] += 1
            await refuse(401, err.message)
        except HttpError as err:
            stats.handshake_rejected[err.reason] += 1
            await refuse(err.status, err.message)
        return None
