"""The server: the serving modules composed, and their lifecycle (serve, shutdown).

Modules (one concept each):

    admission.py   listeners, accept loop, connection limits, Origin, forwarded-for,
                   the token; the checks a stream passes before it opens
    connection.py  one accepted connection: its HTTP requests, the hand-off of /ws
                   and /sse to a session
    routes.py      plain HTTP: health, readiness, /api, static files, admin /metrics
    fanout.py      session registry, tick loop, sweep loop, per-tick framing caches
    session.py     what every stream shares, and SessionContext: all a session may
                   use of the rest (ws.py and sse.py are the two kinds of stream)
    stats.py       the counters the metrics collector reads

Task ownership (every task has an owner):

    serve()
    ├── connections nursery: one handler task per accepted socket (connection.py)
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

import trio

from ..auth import Authenticator
from ..clock import Clock
from ..config import Config
from ..core.hub import Hub
from ..core.protocol import ClientMessage, DecodeLimits, decode_client
from ..core.state import StateStore
from ..log import RateLimitedLog
from ..metrics import Metrics
from .activation import inherited_listeners
from .admission import Admission, accept_loop, listen
from .connection import Connections
from .fanout import FanOut
from .insight import Insight
from .routes import Routes
from .session import SessionContext, StreamSession
from .sockio import close_socket
from .stats import ServerStats
from .walls import WallDesk

__all__ = ["Server", "ServerStats"]

log = logging.getLogger("gateway.server")


class Server:
    """The public listener (WebSocket at /ws, events at /sse, dashboard, REST, health)
    and the admin one, with the public surface app.py, metrics.py and tests use."""

    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        hub: Hub,
        auth: Authenticator,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        insight: Insight | None = None,
        worker: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.insight = insight  # alarms, metadata, history (insight.py)
        self.store = store
        self.hub = hub
        self.auth = auth
        self.clock = clock
        self.stats = ServerStats()
        self.log = RateLimitedLog(log)
        self.metrics = metrics
        self.ports: tuple[int, int] | None = None
        #: listeners passed in by the starting process (activation.py), by name
        self.inherited: tuple[str, ...] = ()
        self.hosts: tuple[str, str] = (cfg.server.host, cfg.server.admin_host)
        self.reuse_port = False  # a worker of `gateway run --workers N` (gateway/cluster)
        #: listeners handed over by the process that owns them (a cluster worker: the
        #: parent's passed-in public socket), used instead of binding or activation
        self.given: dict[str, socket.socket] | None = None
        sc = cfg.server
        self.welcome_limits = {
            "max_message_bytes": sc.max_message_bytes,
            "max_subscriptions": sc.max_subscriptions,
            "max_filters": 64,
            "max_rate_hz": sc.tick_hz,
            "default_rate_hz": sc.default_rate_hz,
            "min_rate_hz": hub.rates.min_hz,
            "rate_steps_hz": list(hub.rates.steps),
            "max_filters_per_connection": sc.max_filters_per_connection,
            "max_groups_per_connection": sc.max_groups_per_connection,
            "auth_deadline_s": sc.auth_timeout_s,
            "messages_per_s": sc.messages_per_s,
            "message_burst": sc.message_burst,
            "max_protocol_errors": sc.max_protocol_errors,
            "wall_report_s": cfg.walls.report_s,
            "wall_min_report_s": cfg.walls.min_report_s,
        }
        self._limits = DecodeLimits(max_topic_bytes=cfg.state.max_topic_bytes)
        self.fanout = FanOut(sc, store, hub, clock, self.stats, self.log, metrics)
        self.admission = Admission(sc, auth, clock, self.stats, self.log)
        self.walls = WallDesk(cfg, store, clock)  # wall reports and actions (walls.py)
        self._shutdown = trio.Event()
        self.stopped = trio.Event()  # set when serve() has returned
        self.routes = Routes(
            cfg,
            store,
            self.stats,
            self.admission.identity,
            lambda: self.fanout.stopping,
            metrics.exposition if metrics is not None else None,
            insight,
            origin_allowed=self.admission.origin_allowed,
            walls=self.walls,
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
            detach=self.walls.wrap_detach(self.fanout.detach),
            pump_later=self.fanout.pump_later,
            insight=insight,
            walls=self.walls,
            worker=worker,
        )
        self.handler = Connections(
            cfg, self.stats, self.admission, self.routes, self.fanout, self.session_ctx
        )

    # -- what sessions, metrics and tests read ----------------------------------------------

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
        # socket activation (a worker of a cluster binds its own with SO_REUSEPORT, or
        # is given the parent's passed-in socket)
        if self.given is not None:
            passed = self.given
        else:
            passed = {} if self.reuse_port else inherited_listeners()
            self.inherited = tuple(sorted(passed))
        public = passed.get("public") or listen(sc.host, sc.port, reuse_port=self.reuse_port)
        admin = passed.get("admin") or listen(sc.admin_host, sc.admin_port)
        self.ports = (public.getsockname()[1], admin.getsockname()[1])
        self.hosts = (
            public.getsockname()[0] if "public" in passed else sc.host,
            admin.getsockname()[0] if "admin" in passed else sc.admin_host,
        )
        turns = self.session_ctx.turns
        trio.lowlevel.add_instrument(turns)  # it marks each scheduler batch (turns.py)
        try:
            async with trio.open_nursery() as connections:
                connections.start_soon(turns.run)  # until the last connection is gone
                async with trio.open_nursery() as services:
                    sndbuf = sc.send_buffer_bytes
                    services.start_soon(
                        accept_loop,
                        public,
                        connections,
                        self.handler.handle_public,
                        sndbuf,
                        self.log,
                    )
                    services.start_soon(
                        accept_loop, admin, connections, self.handler.handle_admin, sndbuf, self.log
                    )
                    services.start_soon(self.fanout.tick_loop)
                    services.start_soon(self.fanout.sweep_loop)
                    services.start_soon(self.fanout.freeze_loop)
                    task_status.started(self.ports)
                    await self._shutdown.wait()
                    services.cancel_scope.cancel()
                await self._drain_connections()
                connections.cancel_scope.cancel()
        finally:
            trio.lowlevel.remove_instrument(turns)
            close_socket(public)
            close_socket(admin)
            self.stopped.set()

    async def _drain_connections(self) -> None:
        self.fanout.stopping = True
        self.handler.cancel_plain_http()
        await self.fanout.close_all()
