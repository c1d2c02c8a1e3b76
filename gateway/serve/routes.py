"""Plain-HTTP routes: health, readiness, ``/api``, static files, admin ``/metrics``.

Liveness and readiness, the REST snapshot API, the dashboard's static files, and the
admin port's Prometheus exposition."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h11
import orjson
import trio

from ..auth import AuthError, Identity
from ..config import Config
from ..core.alarms import with_alarm_grants
from ..core.state import StateStore
from ..core.topics import TopicError, matches, validate_filter
from ..wall import load_wall
from .http import Request, json_body, respond, static_file
from .insight import Insight
from .sockio import Outbound
from .stats import ServerStats

__all__ = ["ReadyCheck", "Routes"]

ReadyCheck = Callable[[], tuple[bool, str]]
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
        metrics_handler: Callable[[], tuple[bytes, bytes]] | None,
        insight: Insight | None = None,
    ) -> None:
        self.insight = insight  # /api/alarms, /api/meta, /api/history
        self.wall_body = load_wall(cfg.server.wall_file)  # /api/wall (checked at load)
        self.cfg = cfg
        self.store = store
        self.stats = stats
        self.identity = identity  # the caller's token, checked (admission.py)
        self.stopping = stopping  # shutdown has begun: not ready
        self.metrics_handler = metrics_handler
        self.ready_checks: dict[str, ReadyCheck] = {}
        root = cfg.server.dashboard_dir or str(Path(__file__).resolve().parents[2] / "dashboard")
        self.dashboard_root = Path(root)

    async def route(self, out: Outbound, conn: h11.Connection, req: Request, public: bool) -> None:
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
            status, body = await self._api(req, full=path == "/api/snapshot")
            await respond(out, conn, status, body, b"application/json", head_only=head)
            return
        if path == "/api/wall":  # the wall's layout: not secret, like the dashboard files
            stats.http_requests["wall"] += 1
            await respond(out, conn, 200, self.wall_body, b"application/json", head_only=head)
            return
        if path in ("/api/alarms", "/api/meta", "/api/history") and self.insight is not None:
            stats.http_requests[path.rsplit("/", 1)[1]] += 1
            status, body = self._insight_api(req, path, self.insight)
            await respond(out, conn, status, body, b"application/json", head_only=head)
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
        ready = not self.stopping() and all(ok for ok, _ in checks.values())
        return ready, {
            "ready": ready,
            "stopping": self.stopping(),
            "checks": {name: {"ok": ok, "detail": why} for name, (ok, why) in checks.items()},
        }

    async def _api(self, req: Request, full: bool) -> tuple[int, bytes]:
        """The topics a filter matches (from the store's topic tree), encoded
        ``API_SLICE`` topics at a time with a checkpoint between slices: a large
        state never holds the loop (each slice is encoded at once, so it is
        consistent per topic)."""
        try:
            identity = self.identity(req)
        except AuthError as err:
            self.stats.auth_failures[err.reason] += 1
            return 401, json_body({"error": "unauthorized", "message": err.message})
        if identity is None:
            return 401, json_body({"error": "unauthorized", "message": "a token is required"})
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
        try:
            identity = self.identity(req)
        except AuthError as err:
            self.stats.auth_failures[err.reason] += 1
            return 401, json_body({"error": "unauthorized", "message": err.message})
        if identity is None:
            return 401, json_body({"error": "unauthorized", "message": "a token is required"})
        return insight.api(path, req.query, identity)
