"""Composition root: builds every part from the config and owns their tasks.

serve(cfg)
├── LoopLag.run             (event-loop lag, the first health signal: looplag.py)
├── Server.serve            (listeners, sessions, tick, sweep; see serve/server.py)
├── data sources            (embedded simulator fleet; MQTT ingest)
└── signal watcher          (SIGTERM/SIGINT -> graceful shutdown, exit 0)
"""

from __future__ import annotations

import logging
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .auth import Authenticator
from .clock import Clock
from .config import Config
from .core.hub import Hub, HubConfig
from .core.state import Deadband, StateStore
from .core.topics import RuleTable
from .looplag import LoopLag
from .memory import tune_malloc
from .metrics import Metrics
from .serve.server import Server

if TYPE_CHECKING:
    from .ingest.mqtt import MqttIngest

__all__ = ["Gateway", "build", "serve"]

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    cfg: Config
    clock: Clock
    store: StateStore
    hub: Hub
    server: Server
    metrics: Metrics
    looplag: LoopLag
    mqtt: MqttIngest | None = None

    @property
    def port(self) -> int:
        assert self.server.ports is not None
        return self.server.ports[0]

    @property
    def admin_port(self) -> int:
        assert self.server.ports is not None
        return self.server.ports[1]


def build(cfg: Config, *, epoch: str | None = None) -> Gateway:
    """Every part, wired, with nothing started (call inside ``trio.run``)."""
    st = cfg.state
    bands: dict[str, dict[str, Deadband]] = {}
    for flt, fld, band in st.deadbands:
        bands.setdefault(flt, {})[fld] = band
    store = StateStore(
        epoch or secrets.token_hex(8),
        deadbands=RuleTable(bands.items()),
        stale_after=RuleTable(st.stale_after),
        max_topics=st.max_topics,
        max_fields=st.max_fields,
        max_tombstones=st.max_tombstones,
        max_topic_bytes=st.max_topic_bytes,
    )
    sc = cfg.server
    hub = Hub(
        store,
        HubConfig(
            tick_hz=sc.tick_hz,
            default_rate_hz=sc.default_rate_hz,
            max_subscriptions=sc.max_subscriptions,
            min_rate_hz=sc.min_rate_hz,
            max_filters_per_connection=sc.max_filters_per_connection,
            max_groups_per_connection=sc.max_groups_per_connection,
            max_frame_bytes=sc.max_frame_bytes,
            stall_s=sc.stall_s,
            max_lag_s=sc.max_lag_s,
        ),
    )
    clock = Clock()
    metrics = Metrics()
    server = Server(cfg, store, hub, Authenticator(cfg.auth), clock, metrics=metrics)
    looplag = LoopLag()
    gw = Gateway(cfg, clock, store, hub, server, metrics, looplag)
    metrics.attach(server, hub, store, lambda: gw.mqtt)
    metrics.attach_loop_lag(looplag, clock.mono)
    return gw


Source = Callable[..., object]


async def serve(
    cfg: Config,
    *,
    install_signals: bool = False,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    tune_malloc()  # a long-running server: keep glibc's heap from fragmenting (memory.py)
    gw = build(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.looplag.run)
        await nursery.start(gw.server.serve)
        if install_signals:
            nursery.start_soon(_watch_signals, gw.server)
        if cfg.mqtt.url:
            from .ingest.mqtt import MqttIngest

            gw.mqtt = MqttIngest(cfg.mqtt, gw.store, gw.clock, cfg.state.max_topic_bytes)
            gw.server.ready_checks["mqtt"] = gw.mqtt.ready
            await nursery.start(gw.mqtt.run)
        if cfg.simulator.devices:
            from devices_sim.inprocess import run_inprocess

            await nursery.start(run_inprocess, gw.store, gw.clock, cfg.simulator)
        sc = cfg.server
        log.info(
            "listening on http://%s:%d/ (WebSocket /ws), admin on http://%s:%d/metrics; epoch %s",
            sc.host,
            gw.port,
            sc.admin_host,
            gw.admin_port,
            gw.store.epoch,
        )
        task_status.started(gw)
        await gw.server.stopped.wait()
        nursery.cancel_scope.cancel()
    log.info("stopped")


async def _watch_signals(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: shutting down gracefully", signal.Signals(signum).name)
            server.request_shutdown()
            return
