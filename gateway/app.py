"""Composition root: builds every part from the config and owns their tasks.

serve(cfg)
├── LoopLag.run             (event-loop lag, the first health signal: looplag.py)
├── Persister.run           (periodic checkpoints, if [persist] state_dir: persist.py)
├── Server.serve            (listeners, sessions, tick, sweep; see serve/server.py)
├── data sources            (embedded simulator fleet; MQTT ingest)
└── signal watcher          (SIGTERM/SIGINT -> graceful shutdown, exit 0)

With persistence, the last checkpoint is loaded (and the epoch decided) before the
store is built and restored before the server listens; then the alarm engine adopts
the restored alarm topics and sees the topics the restore marked stale. The final
checkpoint is written after the server has closed every client (1012) and returned.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .auth import Authenticator
from .clock import Clock
from .config import Config, load_names
from .core.alarms import ALARM_PREFIX, AlarmEngine
from .core.history import History, HistoryMismatch
from .core.hub import Hub, HubConfig
from .core.meta import Meta
from .core.state import Deadband, StateStore, TopicState
from .core.topics import RuleTable
from .insight_metrics import InsightCollector
from .looplag import LoopLag
from .memory import tune_gc, tune_malloc
from .metrics import Metrics
from .persist import Loaded, Persister, Section
from .serve.insight import Insight
from .serve.server import Server
from .walls_metrics import WallsCollector

if TYPE_CHECKING:
    from .ingest.mqtt import MqttIngest

__all__ = ["Gateway", "build", "serve"]

log = logging.getLogger("gateway")

ALARM_TICK_S = 0.25  # delays take effect at most this late


@dataclass
class Gateway:
    cfg: Config
    clock: Clock
    store: StateStore
    hub: Hub
    server: Server
    metrics: Metrics
    looplag: LoopLag
    insight: Insight
    mqtt: MqttIngest | None = None
    persister: Persister | None = None
    #: with ``--workers``: (screens open, most open at once) on the workers, whose
    #: screens this process does not serve itself (the status line and exit summary)
    remote_screens: Callable[[], tuple[int, int]] | None = None

    def screens(self) -> tuple[int, int]:
        """Screens open now and the most open at once, here and on any workers."""
        here = (self.server.connections, self.server.stats.peak_connections)
        if self.remote_screens is None:
            return here
        there = self.remote_screens()
        return here[0] + there[0], here[1] + there[1]

    @property
    def port(self) -> int:
        assert self.server.ports is not None
        return self.server.ports[0]

    @property
    def admin_port(self) -> int:
        assert self.server.ports is not None
        return self.server.ports[1]


def build(cfg: Config, *, epoch: str | None = None, worker: int | None = None) -> Gateway:
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
        stale_learn=st.stale_default,
        stale_multiple=st.stale_multiple,
        stale_floor_s=st.stale_floor_s,
        stale_ceiling_s=st.stale_ceiling_s,
    )
    mc = cfg.meta
    meta = Meta(mc.fields, name_field=mc.name_field, names=load_names(mc), groups=dict(mc.groups))
    history = History(cfg.history)
    alarms = AlarmEngine(cfg.alarms.rules, store, device_name=meta.device_name, unit=meta.unit)
    store.on_accept = _observer(history, alarms)
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
        clock=trio.current_time,
    )
    clock = Clock()
    metrics = Metrics()
    insight = Insight(store, meta, history, alarms, clock.wall)
    server = Server(
        cfg,
        store,
        hub,
        Authenticator(cfg.auth),
        clock,
        metrics=metrics,
        insight=insight,
        worker=worker,
    )
    looplag = LoopLag(sc.loop_lag_interval_s)
    gw = Gateway(cfg, clock, store, hub, server, metrics, looplag, insight)
    metrics.attach(server, hub, store, lambda: gw.mqtt)
    assert metrics.census is not None
    metrics.registry.register(InsightCollector(alarms, history, metrics.census))
    metrics.registry.register(WallsCollector(server.walls.registry, clock.wall))
    metrics.attach_loop_lag(looplag, clock.mono)
    return gw


def _observer(history: History, alarms: AlarmEngine) -> Callable[[TopicState, float], None]:
    """What every accepted change feeds: chart history, then the alarm rules.

    Called for every accepted device message: with no alarm rules (they are fixed for
    the engine's life) the hook is history's own method, one call less per message."""
    if not alarms.rules:
        return history.observe  # it skips the gateway's own ($) topics itself
    observe_history, observe_alarms = history.observe, alarms.observe

    def on_accept(st: TopicState, now: float) -> None:
        if st.topic[:1] == "$":
            return  # the gateway's own (alarm) topics
        observe_history(st, now)
        observe_alarms(st, now)

    return on_accept


def _history_section(history: History) -> Section:
    """Chart history in the checkpoint: charts after a restart show the window before."""

    def restore(payload: memoryview) -> Iterator[int]:
        try:
            yield from history.restore(payload)
        except HistoryMismatch as err:
            log.warning("persist: chart history not restored: %s", err)
        log.info("persist: %d chart series restored", history.stats.series)

    return Section(history.export, restore)


async def _adopt_alarms(gw: Gateway, marked: list[str], batch: int = 1000) -> None:
    """After a restore: rebuild the alarms from their restored topics, then let the
    accepted-change observer see the topics the restore marked stale (a ``stale``
    rule raises on them, as it would have on a running gateway)."""
    store, alarms, now = gw.store, gw.insight.alarms, gw.clock.wall()
    topics = list(store.topics())
    outcomes: collections.Counter[str] = collections.Counter()
    for i in range(0, len(topics), batch):
        for topic in topics[i : i + batch]:
            st = store.get(topic)
            if st is not None and topic.startswith(ALARM_PREFIX):
                outcomes[alarms.adopt(st, now)] += 1
        await trio.lowlevel.checkpoint()
    if outcomes:
        log.info(
            "persist: %d alarms restored; %d whose rule is no longer configured set to "
            "normal (rule_removed)",
            outcomes["adopted"],
            outcomes["removed"],
        )
    observe = store.on_accept
    for i in range(0, len(marked), batch):
        for topic in marked[i : i + batch]:
            st = store.get(topic)
            if st is not None and observe is not None:
                observe(st, now)
        await trio.lowlevel.checkpoint()


async def _alarm_delays(gw: Gateway, task_status: trio.TaskStatus[None]) -> None:
    """Let alarm on/off delays run out: the rules' time evaluation."""
    task_status.started()
    while True:
        await trio.sleep(ALARM_TICK_S)
        gw.insight.alarms.tick(gw.clock.wall())


async def prepare(cfg: Config) -> tuple[Gateway, Loaded]:
    """The gateway built, with its last checkpoint read (and the epoch decided by it)
    if ``[persist] state_dir`` is set; nothing started (app.serve, cluster/parent.py)."""
    tune_malloc()  # a long-running server: keep glibc's heap from fragmenting (memory.py)
    persister = Persister(cfg.persist) if cfg.persist.state_dir else None
    loaded = await persister.load() if persister is not None else Loaded()
    gw = build(cfg, epoch=loaded.epoch)
    if persister is not None:
        gw.persister = persister
        gw.metrics.attach_persist(persister.stats)
        persister.add_section("history", _history_section(gw.insight.history))
    return gw, loaded


async def restore(gw: Gateway, loaded: Loaded, nursery: trio.Nursery) -> None:
    """The checkpoint's state into the store, alarms adopted, periodic checkpoints on."""
    if gw.persister is not None:
        marked = await gw.persister.restore(gw.store, loaded)
        await _adopt_alarms(gw, marked)
        await nursery.start(gw.persister.run, gw.store)


async def start_sources(gw: Gateway, nursery: trio.Nursery) -> None:
    """The alarm rules' timer and the data sources: MQTT ingest, embedded simulator."""
    cfg = gw.cfg
    if cfg.alarms.rules:
        await nursery.start(_alarm_delays, gw)
    if cfg.mqtt.url:
        from .ingest.mqtt import MqttIngest

        gw.mqtt = MqttIngest(cfg.mqtt, gw.store, gw.clock, cfg.state.max_topic_bytes)
        gw.server.ready_checks["mqtt"] = gw.mqtt.ready
        await nursery.start(gw.mqtt.run)
    if cfg.simulator.devices:
        from devices_sim.inprocess import run_inprocess

        await nursery.start(run_inprocess, gw.store, gw.clock, cfg.simulator)


async def serve(
    cfg: Config,
    *,
    install_signals: bool = False,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    gw, loaded = await prepare(cfg)
    try:
        await _serve(gw, loaded, install_signals, task_status)
    finally:
        if gw.persister is not None:
            gw.persister.release()  # the state directory is free for the next gateway
    log.info("stopped")


async def _serve(
    gw: Gateway, loaded: Loaded, install_signals: bool, task_status: trio.TaskStatus[Gateway]
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.looplag.run)
        await restore(gw, loaded, nursery)
        await nursery.start(gw.server.serve)
        if install_signals:
            # the gateway owns the process (the CLI), not a test or an embedding program:
            # what is alive now (and the restored state) is long-lived (memory.py)
            tune_gc()
            # before the start line: a SIGTERM right after it is graceful
            await nursery.start(
                watch_signals, gw.server.request_shutdown, "shutting down gracefully"
            )
        await start_sources(gw, nursery)
        log.info(
            "listening on http://%s:%d/ (WebSocket /ws), admin on http://%s:%d/metrics; epoch %s",
            gw.server.hosts[0],
            gw.port,
            gw.server.hosts[1],
            gw.admin_port,
            gw.store.epoch,
        )
        if gw.server.inherited:  # socket activation (serve/activation.py)
            log.info(
                "listeners passed in by the starting process: %s", ", ".join(gw.server.inherited)
            )
        task_status.started(gw)
        await gw.server.stopped.wait()
        if gw.persister is not None:
            await gw.persister.final(gw.store)  # every client is closed: the epoch may be kept
        nursery.cancel_scope.cancel()


async def watch_signals(
    stop: Callable[[], None],
    what: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The first SIGTERM or SIGINT calls ``stop`` (a graceful shutdown); a second
    one ends the process at once, as its default action does, but says so first: the
    final checkpoint and its clean marker are abandoned, so the next start takes a new
    epoch (it left no trace before: found by an outside check)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stopping:
                log.info("%s: %s", name, what)
                stopping = True
                stop()
                continue
            log.warning(
                "%s again: stopping at once, without the final checkpoint (the next start "
                "takes a new epoch)",
                name,
            )
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
