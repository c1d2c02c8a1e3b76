"""One Server-Sent Events stream at ``/sse``.

The same snapshot and delta messages as ``/ws``, for networks that block WebSocket.

    GET /sse?filter=site/%23&filter=plant/+/temp&rate=5[&access_token=...]
    Accept: text/event-stream
    Last-Event-ID: <epoch>:<changes>:<set>   (sent by EventSource when it reconnects)

Every server message (welcome, snapshot, delta, batch, and a final ``close``) is one
event whose ``data`` is the message's JSON, exactly as on the WebSocket; the event
*type* is the default ("message"). The last event of each write carries an ``id`` of
``<epoch>:<n>:<set>``: the store's change counter (``StateStore.changes``) up to which
this screen has been sent everything it subscribed to, and a digest of the stream's
filters (what it holds depends on them). On reconnect, EventSource sends it back as
``Last-Event-ID``; within the same epoch and for the same filters the gateway then
sends snapshots of the topics that changed after ``n`` and nothing for the others; in
a new epoch, or for other filters (a client that reuses an id on another URL),
snapshots of everything. A filter outside the token's grants is refused with 403
before the stream starts. A comment line (``: hb``) goes out when the stream was quiet for
``heartbeat_s``, so proxies keep it open. Tokens, grants, Origin and connection limits
are those of ``/ws``; there is no ``auth`` message (the token comes in the
``Authorization`` header or ``access_token``).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import TYPE_CHECKING

import orjson
import trio

from ..auth import Identity
from ..core import disconnect as dc
from ..core.disconnect import Disconnect
from ..core.protocol import WALL_NAME_CHARS, Error, Pong, Resume, Subscribe, encode
from ..core.topics import TopicError, matches, validate_filter
from .http import HttpError
from .session import SessionContext, StreamSession
from .sockio import Outbound, recv_some

if TYPE_CHECKING:
    import socket


__all__ = ["SseRequest", "SseSession", "parse_sse_request"]

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Accel-Buffering: no\r\n"  # nginx: pass events on as they come
    b"Connection: close\r\n"
    b"Server: telemetry-gateway\r\n"
    b"\r\n"
    b"retry: 2000\n\n"  # EventSource reconnects after 2 s (plus our own backoff in JS)
)
HEARTBEAT = b": hb\n\n"


def filter_set_digest(filters: tuple[str, ...]) -> str:
    """Names a set of filters in event ids (8 hex digits; order and repeats ignored)."""
    text = "\n".join(sorted(set(filters))).encode()
    return hashlib.blake2b(text, digest_size=4).hexdigest()


class SseRequest:
    __slots__ = ("filters", "last_event_id", "rate_hz", "wall")

    def __init__(
        self,
        filters: tuple[str, ...],
        rate_hz: float | None,
        last_event_id: str | None,
        wall: str | None = None,
    ) -> None:
        self.filters = filters
        self.rate_hz = rate_hz
        self.last_event_id = last_event_id
        self.wall = wall  # the wall this stream shows (docs/protocol.md, "Walls over /sse")


def parse_sse_request(
    target: bytes, last_event_id: bytes | None, max_topic_bytes: int
) -> SseRequest:
    """Filters, rate and resume point of a ``/sse`` request, or :class:`HttpError` 400."""
    _, _, query = target.partition(b"?")
    try:
        params = urllib.parse.parse_qs(query.decode("ascii"), max_num_fields=50, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "the query string is malformed", "bad_request") from None
    raw = params.get("filter", [])
    if not raw or len(raw) > 16:
        raise HttpError(400, "give 1 to 16 'filter' parameters", "bad_request")
    try:
        filters = tuple(validate_filter(f, max_topic_bytes) for f in raw)
    except TopicError as err:
        raise HttpError(400, f"bad filter: {err}", "bad_request") from None
    rate = None
    if "rate" in params:
        try:
            rate = float(params["rate"][0])
        except ValueError:
            raise HttpError(400, "'rate' must be a number", "bad_request") from None
        if not rate > 0:
            raise HttpError(400, "'rate' must be > 0", "bad_request")
    resume = None
    if last_event_id:
        resume = last_event_id.decode("ascii", "replace")[:100]
    wall = params.get("wall", [None])[0]
    if wall is not None and not (0 < len(wall) <= 64 and set(wall) <= WALL_NAME_CHARS):
        raise HttpError(400, "'wall': 1 to 64 letters, digits, space, . _ : -", "bad_request")
    return SseRequest(filters, rate, resume, wall)


class SseSession(StreamSession):
    """One event stream: a hub subscriber whose frames are written as events."""

    __slots__ = ("_head_sent", "_id_tail", "_last_write", "identity", "request")

    def __init__(
        self,
        ctx: SessionContext,
        sock: socket.socket,
        out: Outbound,
        ip: str,
        identity: Identity,
        request: SseRequest,
    ) -> None:
        super().__init__(ctx, sock, out, ip)
        self.identity = identity
        self.request = request
        self._last_write = ctx.clock.mono()
        self._head_sent = False
        self._id_tail = f":{filter_set_digest(request.filters)}"  # see _resume_positions

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    if self._open():
                        self._start()
                    await self._read_until_gone()
                    await self._finish()  # a last event
                finally:
                    self._teardown()
                    nursery.cancel_scope.cancel()
        finally:
            self.ctx.detach(self)

    def _start(self) -> None:
        """The head, welcome, the subscription's ack, and what is due already."""
        ctx = self.ctx
        hub = ctx.hub
        sub = self.sub = hub.connect(self.identity.grants)
        welcome = ctx.welcome(False)
        events = [HEAD, self._event(encode(welcome))]
        positions = self._resume_positions()
        if positions:
            hub.resume(sub, Resume(ctx.store.epoch, positions))
        reply = hub.subscribe(sub, Subscribe("sse", self.request.filters, self.request.rate_hz))
        events.append(self._event(encode(reply)))
        # connection.py refused before the stream what subscribe could refuse (grants,
        # filter limits, rate): a stream that starts has its subscription
        assert type(reply) is not Error, reply
        ctx.attach(self)
        if self.request.wall and ctx.walls is not None:
            ctx.walls.stream_opened(self, self.request.wall)
        self._head_sent = True
        self._write(events)
        self.pump()

    def _resume_positions(self) -> dict[str, int]:
        """What an EventSource reconnecting with ``Last-Event-ID`` holds: within the
        same epoch and for the same filters, every topic of its filters that did not
        change after the id. An id of other filters (a client that reuses one on
        another URL) names nothing it holds: the topics of the new filters it never
        had would be left out (found by a client written from the docs alone). An id
        without the digest (a gateway before it) is taken as before."""
        last = self.request.last_event_id
        if not last:
            return {}
        epoch, _, rest = last.partition(":")
        count, colon, digest = rest.partition(":")
        store = self.ctx.store
        if epoch != store.epoch or not count.isdigit():
            return {}  # another epoch (or garbage): snapshots of everything
        if colon and ":" + digest != self._id_tail:
            return {}  # other filters: snapshots of everything
        upto = int(count)
        filters = self.request.filters
        return {
            st.topic: st.seq
            for st in store.states()
            if st.seq and st.gseq <= upto and any(matches(f, st.topic) for f in filters)
        }

    async def _read_until_gone(self) -> None:
        """An event stream is one-way: a read returns only when the client leaves
        (or :meth:`close` cancels it)."""
        with self._read_scope:
            while True:
                try:
                    data = await recv_some(self.sock)
                except OSError:
                    data = b""
                if not data:
                    self._peer_left("client_gone")
                    return

    @staticmethod
    def _event(data: bytes, event_id: bytes | None = None) -> bytes:
        head = b"id: " + event_id + b"\n" if event_id else b""
        return head + b"data: " + data + b"\n\n"

    # -- writing -----------------------------------------------------------------------

    def _write(self, chunks: list[bytes]) -> bool:
        self._last_write = self.ctx.clock.mono()  # for the heartbeat comments
        return super()._write(chunks)

    def pump(self, now: float | None = None) -> None:
        sub = self.sub
        if sub is None or not self.life.open or self.out.queue:
            return
        ctx = self.ctx
        if now is None:
            now = ctx.clock.mono()
        chunks: list[bytes] = []
        while sub.ready:
            frames = ctx.hub.take(sub, now)
            if not frames:
                break
            ctx.stats.frames_sent += len(frames)
            mine = ctx.hub.personal  # the first frames are this stream's alone: not cached
            chunks += (ctx.sse_event(f, i >= mine) for i, f in enumerate(frames))
        if chunks:
            mark = f"{ctx.store.epoch}:{ctx.hub.sent_upto(sub)}{self._id_tail}".encode()
            chunks.append(b"id: " + mark + b"\n\n")  # an empty event carrying the id
            self._write(chunks)

    # -- timers and closing ------------------------------------------------------------

    def check_timers(self, now: float, wall: float) -> None:
        if not self.life.open:
            return
        expires = self.identity.expires_at
        if expires is not None and wall > expires:
            self.close(dc.AUTH_FAILED, "token expired")
        elif now - self._last_write >= self.ctx.cfg.heartbeat_s and self.out.idle:
            if self.request.wall:  # a wall sees its heartbeats (comments never reach JS)
                self._write([self._event(encode(Pong(None, wall)))])
            else:
                self._write([HEARTBEAT])

    def _send_close(self, why: Disconnect, text: str | None) -> None:
        """A last ``close`` event (the WebSocket close code and reason), then the end;
        a stream closed before it opened gets the HTTP head first."""
        msg = self._event(
            orjson.dumps({"type": "close", "code": why.code, "reason": text or why.text})
        )
        if self.out.idle:
            self._write([msg] if self._head_sent else [HEAD, msg])
        self._read_scope.cancel()
