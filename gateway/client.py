"""An async (Trio) client for the gateway, and ``gateway tail`` built on it.

It keeps a local copy of the subscribed state (:class:`gateway.core.mirror.Mirror`,
the same rules as every client: docs/protocol.md), and:

* reconnects by itself with exponential backoff and full jitter (``random(0,
  min(cap, base * 2**attempt))``), the attempt count reset once a connection has
  stayed up for ``stable_s`` after its welcome (an attempt that timed out waiting for
  one is a failure, however long it took), except after a close code after which
  reconnecting cannot help (``reconnect`` false in gateway/core/disconnect.py): then
  :meth:`run` raises :class:`Refused` (:class:`AuthRejected` for the token);
* on a new connection, resumes with ``(epoch, seq)`` per topic when the gateway's
  epoch is the one it holds (and only receives the deltas), else drops its copy and
  receives snapshots;
* detects gaps and asks for a resync of the topic;
* sends an application ping every ``heartbeat_s`` and reconnects when nothing at
  all arrived for twice that long (a half-open connection).

Usage::

    client = GatewayClient("ws://127.0.0.1:8080/ws", filters=["site/#"])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_until(lambda m: "site/a/dev1" in m.topics)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import math
import random
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Sequence

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .backoff import capped_doubling
from .core.disconnect import DISCONNECTS, should_reconnect
from .core.mirror import Mirror
from .core.protocol import Ack, Error, ProtocolError, Welcome, decode_server
from .core.state import Delta, Snapshot
from .core.topics import TopicError, validate_filter

__all__ = ["AuthRejected", "GatewayClient", "Refused", "tail"]

log = logging.getLogger("gateway.client")

RESUME_CHUNK = 1000  # topics per resume message: stays well under 64 KiB

UpdateCallback = Callable[[Snapshot | Delta], None]


#: after close 1012 (service restart), failures to connect for this long do not grow
#: the backoff: the gateway is coming back, and a refused connection costs it nothing
RESTART_GRACE_S = 30.0
#: after close 1012 the first attempt waits random(0, this): a restart takes about a
#: second, and thousands of screens spread over it instead of arriving in one burst
#: (nor do they wait out a backoff grown before the restart)
RESTART_WINDOW_S = 1.0


class Refused(Exception):
    """The gateway closed with a code after which reconnecting cannot help
    (gateway/core/disconnect.py: ``reconnect`` is false): the client, its
    configuration or its token must change first."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class AuthRejected(Refused):
    """The gateway refused the token (HTTP 401 or close 4001): retrying cannot help."""


class GatewayClient:
    def __init__(
        self,
        url: str,
        filters: Sequence[str],
        *,
        token: str | None = None,
        rate_hz: float | None = None,
        on_update: UpdateCallback | None = None,
        on_error: Callable[[Error], None] | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        stable_s: float = 10.0,
        heartbeat_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.filters = list(filters)
        self.token = token
        self.rate_hz = rate_hz
        self.on_update = on_update
        self.on_error = on_error  # the gateway's `error` replies (else logged)
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_s = stable_s
        self.heartbeat_s = heartbeat_s
        #: from the TCP connect to the welcome: a gateway (or a proxy) that accepts and
        #: never answers is an attempt that failed, not a client waiting forever
        self.connect_timeout_s = connect_timeout_s
        self.rng = rng or random.Random()
        self.mirror = Mirror()
        self.connected = False
        self.connects = 0  # successful connections (welcome received)
        self.welcomed_at = -math.inf  # trio time of the last welcome
        self.resumes = 0  # connections that resumed within the same epoch
        self.last_close: tuple[int | None, str | None] = (None, None)
        self._changed = trio.Event()
        self._stop = False
        self._welcome_by = math.inf

    # -- waiting -------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[Mirror], bool]) -> None:
        """Return once ``predicate(self.mirror)`` holds (checked after every change)."""
        while not predicate(self.mirror):
            await self._changed.wait()

    def stop(self) -> None:
        self._stop = True

    # -- the connection loop ---------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        cap = capped_doubling(self.backoff_base_s, self.backoff_cap_s, attempt)
        return self.rng.uniform(0, cap)

    def next_delay(
        self, attempt: int, *, opened: bool, since_restart: float, restarted: bool = False
    ) -> tuple[float, int]:
        """The wait before the next connection attempt, and the attempt count after it.

        Full-jitter exponential backoff, except around a close 1012 ("service
        restart"): the close itself (``restarted``) is followed by a first attempt
        within RESTART_WINDOW_S and a fresh attempt count, and attempts which never
        opened a connection within RESTART_GRACE_S of it do not grow the backoff: the
        gateway is coming back and a closed port costs it nothing."""
        if restarted:
            return self.rng.uniform(0, RESTART_WINDOW_S), 0
        if not opened and since_restart < RESTART_GRACE_S:
            return self.backoff_delay(0), attempt
        return self.backoff_delay(attempt), attempt + 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect after every failure, until :meth:`stop` or cancellation."""
        attempt = 0
        restart_at = -math.inf
        while not self._stop:
            connects = self.connects
            try:
                # the first connection to get a welcome reports the start (once: a
                # connection that fails after it must not report it again)
                await self._connection(task_status if not self.connects else None)
            except* Refused:
                raise
            except* (
                OSError,
                HandshakeError,
                ConnectionClosed,
                ProtocolError,
                trio.BrokenResourceError,
                trio.TooSlowError,
            ) as group:
                log.info("connection to %s lost: %s", self.url, _describe(group.exceptions[0]))
            finally:
                self.connected = False
                self._notify()
            if self._stop:
                return
            now = trio.current_time()
            opened = self.connects > connects
            restarted = opened and self.last_close[0] == 1012
            if restarted:
                restart_at = now  # "service restart": the gateway will be back shortly
            if opened and now - self.welcomed_at >= self.stable_s:
                attempt = 0
            delay, attempt = self.next_delay(
                attempt, opened=opened, since_restart=now - restart_at, restarted=restarted
            )
            log.info("reconnecting in %.2f s (attempt %d)", delay, attempt)
            await trio.sleep(delay)

    async def _connection(self, task_status: trio.TaskStatus[None] | None) -> None:
        # We open and close the TCP stream ourselves: trio-websocket 0.12 leaves it
        # open when the *server* starts the close handshake (its aclose() returns
        # early once a close reason is set), which leaks a socket per reconnect.
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {self.url!r}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else None
        # the deadline covers the connect, the upgrade and the welcome (_session)
        self._welcome_by = trio.current_time() + self.connect_timeout_s
        with trio.fail_after(self.connect_timeout_s):
            tcp = await trio.open_tcp_stream(parts.hostname, port)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        if parts.scheme == "wss":
            stream = trio.SSLStream(
                tcp, ssl.create_default_context(), server_hostname=parts.hostname
            )
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_at(self._welcome_by):
                        ws = await wrap_client_stream(
                            nursery,
                            stream,
                            parts.hostname,
                            resource,
                            subprotocols=["telemetry.v1"],
                            extra_headers=extra,
                        )
                except ConnectionRejected as err:
                    if err.status_code == 401:
                        raise AuthRejected(
                            f"the gateway refused the token (HTTP {err.status_code})"
                        ) from None
                    raise
                try:
                    await self._session(ws, task_status)
                finally:
                    with trio.move_on_after(1.0) as cleanup:
                        cleanup.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _session(
        self, ws: WebSocketConnection, task_status: trio.TaskStatus[None] | None
    ) -> None:
        with trio.fail_at(self._welcome_by):
            welcome = self._first(await ws.get_message())
        if not isinstance(welcome, Welcome):
            raise ProtocolError("bad_message", "the first message was not a welcome")
        self.heartbeat_s = welcome.heartbeat_s
        resumable = self.mirror.set_epoch(welcome.epoch) and bool(self.mirror.topics)
        if resumable:
            positions = list(self.mirror.positions().items())
            for start in range(0, len(positions), RESUME_CHUNK):
                chunk = dict(positions[start : start + RESUME_CHUNK])
                await self._send(ws, {"type": "resume", "epoch": welcome.epoch, "topics": chunk})
            self.resumes += 1
        sub: dict[str, object] = {"type": "subscribe", "id": "main", "filters": self.filters}
        if self.rate_hz is not None:
            sub["rate_hz"] = self.rate_hz
        await self._send(ws, sub)
        self.connected = True
        self.connects += 1
        self.welcomed_at = trio.current_time()
        self._notify()
        if task_status is not None:
            task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, ws)
            try:
                await self._read(ws)
            finally:
                nursery.cancel_scope.cancel()

    async def _read(self, ws: WebSocketConnection) -> None:
        while not self._stop:
            with trio.move_on_after(2 * self.heartbeat_s) as idle:
                try:
                    data = await ws.get_message()
                except ConnectionClosed as err:
                    reason = err.reason
                    code = None if reason is None else reason.code
                    self.last_close = (code, None if reason is None else reason.reason)
                    if not should_reconnect(code):
                        assert code is not None
                        kind = AuthRejected if DISCONNECTS[code].metric == "auth" else Refused
                        raise kind(f"closed by the gateway: {reason}", code) from None
                    raise
            if idle.cancelled_caught:
                raise ConnectionClosed(None)  # half-open: reconnect
            gaps: dict[str, int] = {}
            for msg in decode_server(data):
                if isinstance(msg, Snapshot | Delta):
                    outcome = self.mirror.apply(msg)
                    if outcome == "gap":
                        held = self.mirror.topics.get(msg.topic)
                        gaps[msg.topic] = held.seq if held else 0
                    elif outcome == "applied" and self.on_update is not None:
                        self.on_update(msg)
                elif isinstance(msg, Error):
                    if self.on_error is not None:
                        self.on_error(msg)
                    else:
                        log.warning("gateway error %s: %s", msg.code, msg.message)
                elif isinstance(msg, Ack) and msg.op == "unsubscribe":
                    pass
            if gaps and self.mirror.epoch is not None:
                log.info("gap in %d topics: asking for a resync", len(gaps))
                await self._send(ws, {"type": "resume", "epoch": self.mirror.epoch, "topics": gaps})
            self._notify()

    async def _heartbeat(self, ws: WebSocketConnection) -> None:
        for n in itertools.count(1):
            await trio.sleep(self.heartbeat_s)
            await self._send(ws, {"type": "ping", "id": n})

    @staticmethod
    async def _send(ws: WebSocketConnection, obj: dict[str, object]) -> None:
        await ws.send_message(orjson.dumps(obj).decode())

    @staticmethod
    def _first(data: str | bytes) -> object:
        msgs = decode_server(data)
        return msgs[0] if msgs else None


def _describe(err: BaseException) -> str:
    if isinstance(err, ConnectionClosed) and err.reason is not None:
        return f"closed {err.reason.code} {err.reason.reason or ''}".strip()
    return f"{type(err).__name__}: {err}"


# -- gateway tail ------------------------------------------------------------------------------


def _format_human(msg: Snapshot | Delta) -> str:
    stamp = datetime.datetime.fromtimestamp(msg.rx).strftime("%H:%M:%S.%f")[:-3]
    if isinstance(msg, Snapshot):
        values = msg.fields
        extra = ""
    else:
        values = msg.set
        extra = "".join(f" -{name}" for name in msg.unset)
    shown = " ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in values.items())
    flags = ""
    if msg.online is False:
        flags += " [offline]"
    if msg.stale:
        flags += " [stale]"
    return f"{stamp} {msg.topic} #{msg.seq} {shown}{extra}{flags}".rstrip()


def _format_json(msg: Snapshot | Delta) -> str:
    out: dict[str, object] = {"topic": msg.topic, "seq": msg.seq, "rx": msg.rx, "ts": msg.ts}
    if isinstance(msg, Snapshot):
        out.update(kind="snapshot", fields=msg.fields, online=msg.online, stale=msg.stale)
    else:
        out.update(kind="delta", base=msg.base, set=msg.set, unset=list(msg.unset))
        if msg.meta:
            out.update(online=msg.online, stale=msg.stale)
    return orjson.dumps(out).decode()


#: how long `gateway tail` waits, subscribed, for a first matching topic before it says
#: that none matches (the gateway sends every matching topic's snapshot on its next tick)
EMPTY_NOTICE_S = 2.0


async def tail(args: argparse.Namespace) -> int:
    """``gateway tail``: exactly ``--count`` lines (0: until interrupted); exit 2 at once
    for a filter the topic rules or the gateway refuse, 3 for a refused token."""
    try:
        validate_filter(args.filter)
    except TopicError as err:
        print(f"gateway tail: bad filter {args.filter!r}: {err}", file=sys.stderr)
        return 2
    fmt = _format_json if args.json else _format_human
    printed = 0
    done = trio.Event()
    refusal: list[str] = []

    def show(msg: Snapshot | Delta) -> None:
        nonlocal printed
        if args.count and printed >= args.count:
            return  # the rest of this frame: --count N prints N lines, not a frame more
        print(fmt(msg), flush=True)
        printed += 1
        if args.count and printed >= args.count:
            done.set()

    def refused(err: Error) -> None:
        if err.ref == "main":  # about our subscription: retrying cannot help
            refusal.append(f"the gateway refused {args.filter!r}: {err.code}: {err.message}")
            done.set()
        else:
            log.warning("gateway error %s: %s", err.code, err.message)

    client = GatewayClient(
        args.url,
        [args.filter],
        token=args.token,
        rate_hz=args.rate,
        on_update=show,
        on_error=refused,
    )

    async def notice_empty() -> None:
        await client.wait_until(lambda m: client.connected)
        await trio.sleep(EMPTY_NOTICE_S)
        if not client.mirror.topics and not done.is_set():
            ws = urllib.parse.urlsplit(args.url)
            scheme = "https" if ws.scheme == "wss" else "http"
            api = ws._replace(scheme=scheme, path="/api/topics", query="")
            print(
                f"gateway tail: 0 topics match {args.filter!r}; waiting for updates "
                f"(the topics there: curl -s '{urllib.parse.urlunsplit(api)}')",
                file=sys.stderr,
                flush=True,
            )

    async def notice_connection() -> None:
        # reconnecting is the client's job; the person watching gets one line per
        # change of state instead of a log line per attempt
        with trio.move_on_after(EMPTY_NOTICE_S):
            await client.wait_until(lambda m: client.connected)
        while True:
            if not client.connected:
                print(
                    f"gateway tail: no connection to {args.url} (is the gateway running? "
                    "make run starts one); retrying",
                    file=sys.stderr,
                    flush=True,
                )
                await client.wait_until(lambda m: client.connected)
                print(f"gateway tail: connected to {args.url}", file=sys.stderr, flush=True)
            await client.wait_until(lambda m: not client.connected)

    auth: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            nursery.start_soon(notice_empty)
            nursery.start_soon(notice_connection)
            await done.wait()
            nursery.cancel_scope.cancel()
    except* Refused as group:  # a token refused, or a close after which retrying cannot help
        auth.extend(group.exceptions)
    except* ValueError as group:  # a URL that is not ws:// or wss://
        refusal.extend(str(e) for e in group.exceptions)
    if auth:
        print(f"gateway tail: {auth[0]}", file=sys.stderr)
        return 3
    if refusal:
        print(f"gateway tail: {refusal[0]}", file=sys.stderr)
        return 2
    return 0
