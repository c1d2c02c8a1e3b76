"""The walls at the edge of the network: their reports in, operators' actions out.

The registry is sans-io (gateway/core/walls.py); this module feeds it from the
sessions (``report`` and ``action_ack`` on a WebSocket; on an event stream, the
``wall`` parameter of ``/sse`` and ``POST /api/walls/report``) and serves the admin
port's ``/api/walls``, ``/walls`` (a page listing them) and ``POST
/api/walls/action``.

Rules:
* Actions need the caller's token on the admin port (``Authorization: Bearer``),
  verified like every token, of an identity named in ``walls.operators`` (anyone
  when auth is ``none``), and an allowed Origin when the request has one (a page
  elsewhere cannot post to the admin port through the operator's browser). Every
  action, refusal and acknowledgement is one line on the ``gateway.audit`` logger:
  who, what, which wall, the action's id. Never the token.
* Reports are not answered; a refusal is a protocol error like any bad message
  (ws.py's error path: counted, logged rate-limited, toward ``max_protocol_errors``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import orjson
import trio

from ..auth import Identity
from ..clock import Clock
from ..config import Config
from ..core.protocol import (
    MAX_REPORT_BYTES,
    ActionAck,
    ClientMessage,
    ProtocolError,
    Report,
    decode_client,
    encode_action,
)
from ..core.state import StateStore
from ..core.walls import MAX_BANNER_CHARS, MAX_PAGE_CHARS, STATES, WallError, Walls
from .http import Request
from .session import StreamSession
from .sse import SseSession
from .walls_page import PAGE_CSP, WALLS_CSS, WALLS_HTML, WALLS_JS
from .ws import WsSession

__all__ = ["Answer", "WallDesk"]

audit = logging.getLogger("gateway.audit")

#: (status, body, content type, extra headers)
Answer = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
JSON = b"application/json"
LIST_SLICE = 250  # walls /api/walls encodes between two checkpoints
_STATUS = {
    "unknown_wall": 404,
    "wall_gone": 409,
    "no_stream": 409,
    "forbidden": 403,
    "unauthorized": 401,
}
_PAGES = {
    "/walls": (WALLS_HTML, b"text/html; charset=utf-8"),
    "/walls.js": (WALLS_JS, b"text/javascript; charset=utf-8"),
    "/walls.css": (WALLS_CSS, b"text/css; charset=utf-8"),
}


def _json(status: int, obj: object) -> Answer:
    return status, orjson.dumps(obj), JSON, []


def _refusal(code: str, message: str) -> Answer:
    return _json(_STATUS.get(code, 400), {"error": code, "message": message})


class WallDesk:
    """The registry and everything that reaches it over the network."""

    def __init__(self, cfg: Config, store: StateStore, clock: Clock) -> None:
        self.cfg = cfg.walls
        self.open_to_all = cfg.auth.mode == "none"  # loopback development: no operators
        self.clock = clock
        self.registry = Walls(cfg.walls, lambda: store.epoch, self._position(store))
        #: open event streams by (identity, wall name): where POSTed reports belong
        self._streams: dict[tuple[str, str], SseSession] = {}

    @staticmethod
    def _position(store: StateStore) -> Callable[[str], tuple[int, float] | None]:
        def position(topic: str) -> tuple[int, float] | None:
            st = store.get(topic)
            return None if st is None else (st.seq, st.changed_at)

        return position

    # -- from the sessions ---------------------------------------------------------------

    def receive(self, session: StreamSession, msg: ClientMessage) -> bool:
        """A wall message on a stream: taken (True), or not a wall message (False).
        Raises :class:`ProtocolError` for a refused one."""
        if not isinstance(msg, Report | ActionAck):
            return False
        now = self.clock.wall()
        try:
            if isinstance(msg, Report):
                self.registry.report(session, msg, now, session.ip)
            else:
                action = self.registry.ack(session, msg, now)
                audit.info(
                    "wall action %s (%s) acknowledged by wall %r: %s%s",
                    action.id,
                    action.action,
                    self.registry.name_of(session),
                    "done" if msg.ok else "failed",
                    f" ({msg.detail})" if msg.detail else "",
                )
        except WallError as err:
            raise ProtocolError(err.code, err.message) from None
        return True

    def stream_opened(self, session: SseSession, wall: str) -> None:
        """An event stream that names its wall (``/sse?wall=``): listed at once."""
        try:
            now = self.clock.wall()
            self.registry.report(session, Report(wall, transport="sse"), now, session.ip, True)
        except WallError:
            return  # the registry is full: the stream runs, unlisted
        self._streams[(session.identity.name, wall)] = session

    def detach(self, session: StreamSession) -> None:
        """The stream ended: its wall is gone (unless a newer page took its name)."""
        wall = self.registry.disconnected(session, self.clock.wall())
        if isinstance(session, SseSession) and wall is not None:
            key = (session.identity.name, wall.name)
            if self._streams.get(key) is session:
                del self._streams[key]

    def wrap_detach(self, detach: Callable[[StreamSession], None]) -> Callable[..., None]:
        """``detach`` that tells the registry first."""

        def both(session: StreamSession) -> None:
            self.detach(session)
            detach(session)

        return both

    def post(self, identity: Identity, body: bytes) -> Answer:
        """``POST /api/walls/report``: a ``report`` or ``action_ack`` from a wall on an
        event stream of the same identity."""
        if len(body) > MAX_REPORT_BYTES:
            return _refusal("bad_message", f"a report is limited to {MAX_REPORT_BYTES} bytes")
        try:
            msg = decode_client(body)
        except ProtocolError as err:
            return _refusal(err.code, err.message)
        if not isinstance(msg, Report | ActionAck):
            return _refusal("bad_message", "only 'report' and 'action_ack' are taken here")
        if isinstance(msg, Report):
            stream = self._streams.get((identity.name, msg.wall))
        else:
            stream = self._stream_with_action(identity, msg.id)
        if stream is None or not stream.life.open:
            return _refusal("no_stream", "no open /sse stream of yours carries this wall")
        try:
            self.receive(stream, msg)
        except ProtocolError as err:
            return _refusal(err.code, err.message)
        return 202, b'{"taken":true}', JSON, []

    def _stream_with_action(self, identity: Identity, action_id: str) -> SseSession | None:
        for (who, wall), session in self._streams.items():
            entry = self.registry.get(wall)
            mine = who == identity.name and entry is not None and entry.conn is session
            if mine and entry is not None and any(a.id == action_id for a in entry.actions):
                return session
        return None

    # -- the admin port ------------------------------------------------------------------

    def serves(self, path: str) -> bool:
        return path in _PAGES or path in ("/api/walls", "/api/walls/action")

    async def _listing(self) -> Answer:
        """/api/walls, encoded LIST_SLICE walls between two checkpoints (2,000 walls
        take about 30 ms to encode: never in one go)."""
        registry = self.registry
        now = self.clock.wall()
        ranked = registry.ranked(now)
        counts = dict.fromkeys(STATES, 0)
        parts: list[bytes] = []
        for start in range(0, len(ranked), LIST_SLICE):
            rows = [
                registry.doc(w, s, why, now) for w, s, why in ranked[start : start + LIST_SLICE]
            ]
            parts.append(orjson.dumps(rows)[1:-1])
            await trio.lowlevel.checkpoint()
        for _, state, _ in ranked:
            counts[state] += 1
        head = {
            "epoch": registry.epoch(),
            "now": now,
            "counts": counts,
            "thresholds": self._thresholds(),
        }
        body = orjson.dumps(head)[:-1] + b',"walls":[' + b",".join(parts) + b"]}"
        return 200, body, JSON, []

    async def admin(
        self,
        req: Request,
        caller: Callable[[Request], Identity | tuple[int, bytes]],
        origin_allowed: Callable[[Request], bool],
    ) -> Answer:
        """The admin port's wall paths (``serves``)."""
        if req.path in _PAGES:
            body, ctype = _PAGES[req.path]
            return 200, body, ctype, [(b"content-security-policy", PAGE_CSP)]
        if req.path == "/api/walls":
            return await self._listing()
        # /api/walls/action
        if req.method != "POST":
            return 405, b"POST only\n", b"text/plain", [(b"allow", b"POST")]
        if req.header(b"origin") is not None and not origin_allowed(req):
            return _refusal("forbidden", "Origin not allowed")
        identity = caller(req)
        if not isinstance(identity, Identity):
            return identity[0], identity[1], JSON, []
        who = identity.name
        if not (self.open_to_all or who in self.cfg.operators):
            audit.info("wall action refused: %s is not a walls operator", who)
            return _refusal("forbidden", f"identity {who!r} is not in walls.operators")
        return self._act(req.query, who)

    def _act(self, query: dict[str, str], who: str) -> Answer:
        name = query.get("wall", "")
        action = query.get("action", "")
        params: dict[str, Any] = {}
        if action == "page":
            page = query.get("page", "")
            if not 0 < len(page) <= MAX_PAGE_CHARS or not page.isprintable():
                return _refusal("bad_action", f"'page': 1 to {MAX_PAGE_CHARS} characters")
            params["page"] = page
        elif action == "banner":
            text = query.get("text", "")
            if len(text) > MAX_BANNER_CHARS or not text.isprintable():
                return _refusal("bad_action", f"'text': at most {MAX_BANNER_CHARS} characters")
            try:
                ttl = float(query.get("ttl_s", "0"))
            except ValueError:
                ttl = math.nan
            if not (math.isfinite(ttl) and 0 <= ttl <= 86400):
                return _refusal("bad_action", "'ttl_s': a number of seconds 0 to 86400")
            params.update(text=text, ttl_s=ttl)
        try:
            conn, act = self.registry.action(name, action, params, who, self.clock.wall())
        except WallError as err:
            audit.info(
                "wall action refused: %s asked %s on wall %r: %s", who, action, name, err.code
            )
            return _refusal(err.code, err.message)
        audit.info("wall action %s by %s: %s on wall %r %s", act.id, who, action, name, params)
        if not self._send(conn, encode_action(act.id, action, params)):
            act.detail = "not sent: the stream is closing"
        return _json(202, {"id": act.id, "wall": name, "action": action, "status": "sent"})

    @staticmethod
    def _send(conn: object, data: bytes) -> bool:
        if isinstance(conn, StreamSession) and not conn.life.open:
            return False
        if isinstance(conn, WsSession):
            conn._write_text(data)
            return True
        if isinstance(conn, SseSession):
            conn._write([conn._event(data)])
            return True
        return False

    def _thresholds(self) -> dict[str, float]:
        c = self.cfg
        return {
            "report_s": c.report_s,
            "silent_s": c.silent_s,
            "lag_s": c.lag_s,
            "stale_s": c.stale_s,
            "min_fps": c.min_fps,
            "slow_frame_ms": c.slow_frame_ms,
            "gone_keep_s": c.gone_keep_s,
        }
