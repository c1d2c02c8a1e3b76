"""Plain-HTTP routes: health, readiness, ``/api``, static files, admin ``/metrics``.

Liveness and readiness, the REST snapshot API, the dashboard's static files, and the
admin port's Prometheus exposition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import orjson
import trio

from ..auth import AuthError, Identity
from ..config import Config
from ..core.alarms import with_alarm_grants
from ..core.state import StateStore
from ..core.topics import TopicError, matches, validate_filter
from ..wall import load_wall
from .budget import HttpBodies
from .http import Request, ResponseLimits, json_body, respond
from .insight import Insight
from .sockio import Outbound
from .static import security_headers, static_file
from .stats import ServerStats

if TYPE_CHECKING:
    from .walls import WallDesk

__all__ = ["ReadyCheck", "Routes"]

ReadyCheck = Callable[[], tuple[bool, str]]
BUSY = [(b"retry-after", b"1"), (b"connection", b"close")]
API_SLICE = 2000  # topics /api/snapshot encodes between two checkpoints


class Routes:
    """Every plain-HTTP request on either port, answered by path."""

    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        stats: ServerStats,
        identity: Callable[[Request], Identity | None],
        stopping: Callable[[], bool],
        metrics_handler: Callable[[], Awaitable[tuple[bytes, bytes]]] | None,
        insight: Insight | None = None,
        origin_allowed: Callable[[Request], bool] = lambda _req: True,
        walls: WallDesk | None = None,
    ) -> None:
        self.walls = walls  # /api/walls, /walls, actions (admin); wall reports over SSE
        self.insight = insight  # /api/alarms, /api/meta, /api/history
        #: the requests built in steps (/api/snapshot, /api/topics, a history sample):
        #: one at a time, all connections together. Eight keep-alive clients pipelining
        #: /api/history?filter=%23&limit=100 kept each scheduler batch full of their
        #: steps: 97 % of loop-lag samples over 10 ms (found by an outside check)
        self.heavy = trio.CapacityLimiter(1)
        self.wall_body = load_wall(cfg.server.wall_file)  # /api/wall (checked at load)
        self.cfg = cfg
        self.store = store
        self.stats = stats
        self.identity = identity  # the caller's token, checked (admission.py)
        self.stopping = stopping  # shutdown has begun: not ready
        self.metrics_handler = metrics_handler
        self.ready_checks: dict[str, ReadyCheck] = {}
        self.origin_allowed = origin_allowed  # the same Origin rule as /ws (admission.py)
        sc = cfg.server
        #: every response's deadlines, and the bodies all connections hold (budget.py)
        self.limits = ResponseLimits(
            sc.http_write_timeout_s,
            sc.http_response_timeout_s,
            HttpBodies(sc.max_http_pending_bytes),
        )
        self.static_headers = security_headers(sc.frame_ancestors)
        root = cfg.server.dashboard_dir or str(Path(__file__).resolve().parents[2] / "dashboard")
        self.dashboard_root = Path(root)

    async def route(
        self,
        out: Outbound,
        conn: h11.Connection,
        req: Request,
        public: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> None:
        """Answer one request (``extra``: headers for every answer, such as
        ``Connection: close`` on a keep-alive connection's last request).
        Raises :class:`ResponseCut` for an answer not written whole."""
        stats = self.stats
        head = req.method == "HEAD"
        extra = extra or []

        async def answer(
            status: int,
            body: bytes,
            ctype: bytes = b"text/plain; charset=utf-8",
            headers: list[tuple[bytes, bytes]] | None = None,
        ) -> None:
            await respond(
                out, conn, status, body, ctype, [*(headers or []), *extra], head, self.limits
            )

        walls = self.walls
        if walls is not None and await self._walls(req, public, body, walls, answer):
            return
        if req.method not in ("GET", "HEAD"):
            stats.http_requests["method_not_allowed"] += 1
            await answer(405, b"only GET and HEAD\n", headers=[(b"allow", b"GET, HEAD")])
            return
        path = req.path
        if path == "/healthz":
            stats.http_requests["healthz"] += 1
            await answer(200, b"ok\n")
            return
        if path == "/readyz":
            stats.http_requests["readyz"] += 1
            ready, detail = self.readiness(private=not public)
            await answer(200 if ready else 503, json_body(detail), b"application/json")
            return
        if not public:
            if path == "/metrics" and self.metrics_handler is not None:
                stats.http_requests["metrics"] += 1
                body, ctype = await self.metrics_handler()
                await answer(200, body, ctype)
                return
            stats.http_requests["not_found"] += 1
            listing = b"/metrics /healthz /readyz" if self.metrics_handler else b"/healthz /readyz"
            await answer(404, b"admin endpoints: " + listing + b"\n")
            return
        if path in ("/api/topics", "/api/snapshot"):
            stats.http_requests[path.rsplit("/", 1)[1]] += 1
            if await self._api_refused(req, answer):
                return
            async with self.heavy:
                status, body = await self._api(req, full=path == "/api/snapshot")
            await answer(status, body, b"application/json", self._cors(req))
            return
        if path == "/api/wall":  # the wall's layout: not secret, like the dashboard files
            stats.http_requests["wall"] += 1
            await respond(out, conn, 200, self.wall_body, b"application/json", head_only=head)
            return
        if path in ("/api/alarms", "/api/meta", "/api/history") and self.insight is not None:
            stats.http_requests[path.rsplit("/", 1)[1]] += 1
            if await self._api_refused(req, answer):
                return
            if path == "/api/history" and "filter" in req.query:  # a sample, in steps
                identity = self._caller(req)
                if isinstance(identity, Identity):
                    async with self.heavy:
                        status, body = await self.insight.api_history_sample(
                            req.query, identity, self.cfg.state.max_topic_bytes
                        )
                else:
                    status, body = identity
            else:
                status, body = self._insight_api(req, path, self.insight)
            await answer(status, body, b"application/json", self._cors(req))
            return
        found = static_file(self.dashboard_root, path)
        if found is None:
            stats.http_requests["not_found"] += 1
            await answer(404, b"not found\n")
            return
        stats.http_requests["static"] += 1
        await answer(200, found[0], found[1], self.static_headers)

    async def _walls(
        self,
        req: Request,
        public: bool,
        body: bytes,
        walls: WallDesk,
        answer: Callable[..., Awaitable[None]],
    ) -> bool:
        """The walls' paths (walls.py): the registry, its page and the actions on the
        admin port, the reports of walls on event streams on the public one; True
        when answered."""
        path = req.path
        if not public and walls.serves(path):
            self.stats.http_requests["walls"] += 1
            status, out, ctype, headers = await walls.admin(req, self._caller, self.origin_allowed)
        elif public and path == "/api/walls/report":
            self.stats.http_requests["wall_report"] += 1
            if req.method != "POST":
                await answer(405, b"POST only\n", headers=[(b"allow", b"POST")])
                return True
            if await self._api_refused(req, answer):
                return True
            identity = self._caller(req)
            if not isinstance(identity, Identity):
                await answer(identity[0], identity[1], b"application/json")
                return True
            status, out, ctype, headers = walls.post(identity, body)
            headers = [*headers, *self._cors(req)]
        else:
            return False
        await answer(status, out, ctype, headers)
        return True

    async def _api_refused(self, req: Request, answer: Callable[..., Awaitable[None]]) -> bool:
        """/api/*: the Origin rule of /ws (admission.py), then the bodies' budget
        (refused before a body is built); True when refused (answered)."""
        if not self.origin_allowed(req):
            self.stats.handshake_rejected["origin"] += 1
            await answer(403, b"Origin not allowed\n")
            return True
        if self.limits.bodies.full:
            self.stats.http_cut["busy"] += 1
            await answer(503, b"busy: too many responses in flight, retry\n", headers=BUSY)
            return True
        return False

    @staticmethod
    def _cors(req: Request) -> list[tuple[bytes, bytes]]:
        """CORS headers for an allowed origin (only allowed ones reach here)."""
        origin = req.header(b"origin")
        allow = [(b"access-control-allow-origin", origin)] if origin is not None else []
        return [*allow, (b"vary", b"Origin")]

    def readiness(self, private: bool = True) -> tuple[bool, dict[str, object]]:
        """Ready or not, and why; the checks' details (which may name hosts, ports and
        users) only on the admin port (``private``), the public answer names a check
        that is not ready and nothing else."""
        checks = {name: check() for name, check in self.ready_checks.items()}
        ready = not self.stopping() and all(ok for ok, _ in checks.values())
        reasons = ["stopping"] if self.stopping() else []
        reasons += [f"{name} not ready" for name, (ok, _) in checks.items() if not ok]
        answer: dict[str, object] = {"ready": ready, "stopping": self.stopping()}
        if private:
            answer["checks"] = {n: {"ok": ok, "detail": why} for n, (ok, why) in checks.items()}
        else:
            answer["checks"] = {n: {"ok": ok} for n, (ok, _) in checks.items()}
            answer["reasons"] = reasons
        return ready, answer

    def _caller(self, req: Request) -> Identity | tuple[int, bytes]:
        """The caller's identity, or the 401 answer: one rule for every /api path."""
        try:
            identity = self.identity(req)
        except AuthError as err:
            self.stats.auth_failures[err.reason] += 1
            return 401, json_body({"error": "unauthorized", "message": err.message})
        if identity is None:
            return 401, json_body({"error": "unauthorized", "message": "a token is required"})
        return identity

    async def _api(self, req: Request, full: bool) -> tuple[int, bytes]:
        """The topics a filter matches (from the store's topic tree), encoded
        ``API_SLICE`` topics at a time with a checkpoint between slices: a large
        state never holds the loop (each slice is encoded at once, so it is
        consistent per topic)."""
        identity = self._caller(req)
        if not isinstance(identity, Identity):
            return identity
        try:
            flt = validate_filter(req.query.get("filter", "#"), self.cfg.state.max_topic_bytes)
        except TopicError as err:
            return 400, json_body({"error": "bad_filter", "message": str(err)})
        grants = with_alarm_grants(identity.grants)  # and the alarms of those topics
        store = self.store
        parts: list[bytes] = []
        out: dict[str, object] = {}
        for n, topic in enumerate(store.tree.matching(flt), 1):
            if n % API_SLICE == 0:
                if out:
                    parts.append(orjson.dumps(out)[1:-1])
                    out = {}
                await trio.lowlevel.checkpoint()
            st = store.get(topic)
            if st is None or not st.seq:
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
        if out:
            parts.append(orjson.dumps(out)[1:-1])
        head = json_body({"epoch": store.epoch, "filter": flt})[:-1]
        return 200, head + b',"topics":{' + b",".join(parts) + b"}}"

    def _insight_api(self, req: Request, path: str, insight: Insight) -> tuple[int, bytes]:
        """The same authentication as /api/snapshot, then insight.py."""
        identity = self._caller(req)
        if not isinstance(identity, Identity):
            return identity
        return insight.api(path, req.query, identity)
