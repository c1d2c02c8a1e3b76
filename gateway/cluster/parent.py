"""The parent of ``gateway run --workers N``: one ingest, one authority, N workers.

serve_cluster(cfg)
├── LoopLag.run, Persister.run, alarm delays, data sources   (as app.serve)
├── admin listener                   (/metrics, /readyz, /healthz: this process)
├── Replicator.run                   (the change stream to every worker)
└── one supervisor per worker slot   (start, full sync, serve, restart with backoff)

Rules:

* The parent's store is the authority: it assigns seqs, sweeps staleness, runs the
  alarm rules and persistence. The replicator is the only reader of its changed
  topics (``drain_changed``; the parent serves no screens): at most every
  :attr:`Replicator.interval` it encodes the changed topics' whole records once
  (snapshotfile.encode_records, :data:`BATCH` per message, a checkpoint between
  messages) and queues the same bytes for every worker.
* A new worker (start or restart) gets its settings, the chart history, then the
  full state in batches, then ``SYNCED``; it is put on the change stream before the
  full state is encoded, so nothing falls between the two (a record it holds
  already, or an older one, is ignored by ``apply_replica``).
* Each worker's queue is capped (``server.worker_channel_bytes``): a worker that
  cannot keep up is killed and restarted with a full sync; the parent's memory does
  not grow with a slow worker.
* A worker that exits is restarted after a backoff (0.5 s doubling to 10 s; reset
  after 30 s of service), and logged; the port stays served by the others.
* Both sides beat (``BEAT`` every second, channel.py). A worker the parent has not
  heard for ``server.worker_silent_s`` (10 s) is hung (stopped, or its loop stalled:
  its share of new connections would hang): it is killed and restarted (reason
  ``hung``). One silent for more than 3 beats is not counted as serving in
  ``/readyz`` meanwhile. A worker that does not hear the parent says it is not
  ready (worker.py).
* Shutdown: SIGTERM to each worker (each closes its screens 1012), at most
  ``shutdown_timeout_s + close_timeout_s + 2`` s, then SIGKILL; then the parent's
  final checkpoint. Workers run in their own session (a terminal's Ctrl-C reaches
  only the parent, which stops them in order) and end by themselves when the
  channel closes, so none outlives the parent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pickle
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Final

import orjson
import trio

from ..app import Gateway, prepare, restore, start_sources, watch_signals
from ..auth import Identity
from ..config import Config
from ..core import snapshotfile
from ..core.protocol import AckAlarm, Error
from ..memory import tune_gc
from ..serve.activation import inherited_listeners
from ..serve.admission import accept_loop, bind, listen
from ..serve.sockio import close_socket
from .channel import BEAT_S, ChannelError, Kind, Outbox, Reader
from .metrics import ClusterCollector, ClusterStats
from .worker import WorkerSetup

__all__ = ["Cluster", "serve_cluster"]

log = logging.getLogger("gateway.cluster")

BATCH: Final = 1000  # topic records per message
MIN_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 10.0
HEALTHY_S: Final = 30.0  # a worker that served this long restarts without backoff
STARTUP_S: Final = 30.0  # from the start of a worker process to its HELLO
SILENT_S: Final = 3 * BEAT_S  # a worker not heard this long is not counted as serving


@dataclass
class Slot:
    """One worker position: the process in it changes across restarts."""

    index: int
    pid: int | None = None
    out: Outbox | None = None
    serving: bool = False
    admin_port: int | None = None
    starts: int = 0
    overflowed: bool = False  # the current process was killed for falling behind
    screens: int = 0  # open on the current process (its SCREENS reports)
    peak: int = 0  # most open at once on the current process
    heard_at: float = 0.0  # the current process's last message (trio time)
    hung: bool = False  # the current process was killed for falling silent

    def silent_s(self) -> float:
        return trio.current_time() - self.heard_at


class Cluster:
    def __init__(
        self,
        gw: Gateway,
        workers: int,
        port: int,
        log_level: str,
        shared: socket.socket | None = None,
    ) -> None:
        self.gw = gw
        self.port = port
        #: the public listener passed in by the starting process (socket activation):
        #: handed to every worker, which all accept from it; else they bind the port
        #: each with SO_REUSEPORT
        self.shared = shared
        self.log_level = log_level
        self.slots = [Slot(i) for i in range(workers)]
        self.stats = ClusterStats(
            workers, lambda: self.serving, self.queued_bytes, lambda: self.screens()[0]
        )
        self.stopping = False
        self._procs: dict[int, trio.Process] = {}
        sc = gw.cfg.server
        self.cap = sc.worker_channel_bytes
        self.interval = 0.5 / sc.tick_hz  # replication adds at most this to data age
        self.peak_screens = 0  # most screens open at once on all workers together
        self._peak_before = 0  # the peaks of worker processes that have ended

    # -- what /readyz and /metrics read ----------------------------------------------

    @property
    def serving(self) -> int:
        return sum(s.serving and s.silent_s() <= SILENT_S for s in self.slots)

    def ready(self) -> tuple[bool, str]:
        def state(s: Slot) -> str:
            if not s.serving:
                return "starting"
            silent = s.silent_s()
            return "serving" if silent <= SILENT_S else f"silent for {silent:.0f} s"

        parts = [f"{s.index}: {state(s)} (pid {s.pid}, admin {s.admin_port})" for s in self.slots]
        return self.serving > 0, f"{self.serving} of {len(self.slots)} serving; " + "; ".join(parts)

    def screens(self) -> tuple[int, int]:
        """Screens open on the workers now, and the most open at once: the larger of
        the highest sum reported and the highest single worker (peaks of workers
        that ended included)."""
        peak = max((s.peak for s in self.slots), default=0)
        return sum(s.screens for s in self.slots), max(self.peak_screens, peak, self._peak_before)

    def queued_bytes(self) -> int:
        return max((s.out.queued for s in self.slots if s.out is not None), default=0)

    # -- the change stream -------------------------------------------------------------

    def _outboxes(self) -> list[tuple[Slot, Outbox]]:
        return [(s, s.out) for s in self.slots if s.out is not None]

    def _push(self, kind: Kind, payload: bytes) -> None:
        for slot, out in self._outboxes():
            if not out.push(kind, payload):
                self._overflow(slot)

    def _overflow(self, slot: Slot) -> None:
        proc = self._procs.get(slot.index)
        if proc is not None and proc.returncode is None and slot.out is not None:
            log.warning(
                "worker %d cannot keep up (%d bytes queued): restarting it with a full sync",
                slot.index,
                slot.out.queued,
            )
            slot.out = None  # nothing more is queued for it
            slot.overflowed = True
            proc.kill()

    async def replicate(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        store = self.gw.store
        work = trio.Event()

        def wake() -> None:
            work.set()

        store.on_change = wake
        last = -math.inf
        task_status.started()
        while True:
            if not store.has_changes:
                await work.wait()
                work = trio.Event()
            await trio.sleep_until(max(last + self.interval, trio.current_time()))
            last = trio.current_time()
            changed = store.drain_changed()
            for i in range(0, len(changed), BATCH):
                states = [st for t in changed[i : i + BATCH] if (st := store.get(t)) is not None]
                payload = snapshotfile.encode_records(states)
                self.stats.batches += 1
                self.stats.records += len(states)
                self.stats.stream_bytes += len(payload)
                self._push(Kind.RECORDS, payload)
                await trio.lowlevel.checkpoint()

    # -- workers -----------------------------------------------------------------------

    async def supervise(self, slot: Slot) -> None:
        backoff = MIN_BACKOFF_S
        while not self.stopping:
            began = trio.current_time()
            code = await self._run_worker(slot)
            if self.stopping:
                return
            if trio.current_time() - began >= HEALTHY_S:
                backoff = MIN_BACKOFF_S
            reason = "overflow" if slot.overflowed else "hung" if slot.hung else "exited"
            self.stats.restarts[reason] += 1
            how = {"overflow": "was killed for falling behind", "hung": "was killed as hung"}
            log.warning(
                "worker %d (pid %s) %s with %s; restarting it in %.1f s",
                slot.index,
                slot.pid,
                how.get(reason, "exited"),
                code,
                backoff,
            )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _run_worker(self, slot: Slot) -> int | None:
        ours, theirs = socket.socketpair()
        fds = (theirs.fileno(),) if self.shared is None else (theirs.fileno(), self.shared.fileno())
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway.cluster.worker", str(theirs.fileno())],
                pass_fds=fds,
                start_new_session=True,  # Ctrl-C reaches the parent only
            )
        finally:
            theirs.close()
        slot.starts += 1
        slot.overflowed = slot.hung = False
        slot.pid = proc.pid
        self._procs[slot.index] = proc
        log.info("worker %d started (pid %d)", slot.index, proc.pid)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        out = Outbox(self.cap)
        reader = Reader(stream)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_end_when_exited, proc, nursery.cancel_scope)
                hello = None
                # HELLO: the worker has its modules loaded (an error: it is not starting)
                with (
                    trio.move_on_after(STARTUP_S),
                    contextlib.suppress(trio.BrokenResourceError, ChannelError),
                ):
                    hello = await reader.receive()
                if hello is not None and hello[0] is Kind.HELLO:
                    slot.heard_at = trio.current_time()
                    nursery.start_soon(out.run, stream)
                    nursery.start_soon(self._read, slot, reader, out)
                    nursery.start_soon(self._watch, slot, proc)
                    await self._sync(slot, out)
                else:
                    log.error("worker %d did not start within %.0f s", slot.index, STARTUP_S)
                    proc.kill()
                await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            slot.out = None
            slot.serving = False
            slot.admin_port = None
            self._peak_before = max(self._peak_before, slot.peak)
            slot.screens = slot.peak = 0
            if proc.returncode is None:  # cancelled (shutdown went over time)
                proc.kill()
            await stream.aclose()
        return proc.returncode

    async def _sync(self, slot: Slot, out: Outbox) -> None:
        """Settings, history, then the full state (with the change stream following)."""
        gw = self.gw
        cfg = self._worker_config(slot.index)
        fd = None if self.shared is None else self.shared.fileno()
        setup = WorkerSetup(cfg, slot.index, gw.store.epoch, self.log_level, fd)
        out.push(Kind.CONFIG, pickle.dumps(setup))
        for chunk in gw.insight.history.export():
            out.push(Kind.HISTORY, chunk)
            await out.wait_below(self.cap // 4)
        out.push(Kind.HISTORY_END)
        slot.out = out  # on the change stream from here: nothing falls in between
        states = list(gw.store.states())  # the dict may grow meanwhile
        for i in range(0, len(states), BATCH):
            # each batch encoded when it is sent: its topics' states as of now
            chunk = snapshotfile.encode_records(states[i : i + BATCH])
            self.stats.sync_bytes += len(chunk)
            out.push(Kind.RECORDS, chunk)
            await out.wait_below(self.cap // 4)
        out.push(Kind.SYNCED)
        if out.overflowed:  # a single message over the cap (the caps are far apart)
            slot.out = out
            self._overflow(slot)

    def _worker_config(self, index: int) -> Config:
        cfg = self.gw.cfg
        sc = cfg.server
        admin = sc.admin_port + 1 + index if sc.admin_port else 0
        return dataclasses.replace(
            cfg,
            server=dataclasses.replace(sc, port=self.port, admin_port=admin),
            mqtt=dataclasses.replace(cfg.mqtt, url=""),
            simulator=dataclasses.replace(cfg.simulator, devices=0),
            persist=dataclasses.replace(cfg.persist, state_dir=""),
        )

    async def _watch(self, slot: Slot, proc: trio.Process) -> None:
        """Kill the worker if it falls silent for ``worker_silent_s``: a stopped
        process keeps its listening socket, and the kernel goes on handing it new
        connections that nobody accepts."""
        limit = self.gw.cfg.server.worker_silent_s
        while proc.returncode is None:
            before = trio.current_time()
            await trio.sleep(BEAT_S)
            if trio.current_time() - before > 2 * BEAT_S:
                # this process was the one stopped (or its loop stalled): what it did not
                # read meanwhile says nothing of the worker, which gets a new window
                slot.heard_at = trio.current_time()
                continue
            silent = slot.silent_s()
            if silent > limit and proc.returncode is None and not self.stopping:
                log.warning(
                    "worker %d (pid %d) sent nothing for %.0f s (hung: stopped, or its event "
                    "loop stalled): killing it",
                    slot.index,
                    proc.pid,
                    silent,
                )
                slot.hung = True
                proc.kill()
                return

    async def _read(self, slot: Slot, reader: Reader, out: Outbox) -> None:
        while True:
            try:
                msg = await reader.receive()
            except (trio.BrokenResourceError, ChannelError) as err:
                msg = None
                if isinstance(err, ChannelError):
                    log.error("worker %d: channel broken (%s): restarting it", slot.index, err)
                    proc = self._procs.get(slot.index)
                    if proc is not None and proc.returncode is None:
                        proc.kill()
            if msg is None:
                return  # the worker is gone or going: its supervisor sees it exit
            kind, payload = msg
            slot.heard_at = trio.current_time()
            if kind is Kind.READY:
                info = orjson.loads(payload)
                slot.admin_port = info["admin_port"]
                slot.serving = True
                log.info(
                    "worker %d serving (pid %d, admin port %d)",
                    slot.index,
                    info["pid"],
                    slot.admin_port,
                )
            elif kind is Kind.ACK:
                out.push(Kind.ACK_REPLY, self._ack(payload))
            elif kind is Kind.SCREENS:
                info = orjson.loads(payload)
                slot.screens, slot.peak = int(info["open"]), int(info["peak"])
                self.peak_screens = max(self.peak_screens, self.screens()[0])

    def _ack(self, payload: bytes) -> bytes:
        req = orjson.loads(payload)
        grants = req["grants"]
        identity = Identity(
            req["name"], None if grants is None else tuple(grants), None, req["can_ack"]
        )
        reply = self.gw.insight.ack_alarm(identity, AckAlarm(req["id"], tuple(req["alarms"])))
        assert reply is not None  # decided here: the parent forwards nothing
        if isinstance(reply, Error):
            answer = {"rid": req["rid"], "ok": False, "code": reply.code, "message": reply.message}
        else:
            answer = {"rid": req["rid"], "ok": True, "alarms": reply.alarms or ()}
        return orjson.dumps(answer)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.replicate)
            for slot in self.slots:
                nursery.start_soon(self.supervise, slot)
            nursery.start_soon(self._beat)
            task_status.started()

    async def _beat(self) -> None:
        """``BEAT`` to every worker every second (see the module doc)."""
        while True:
            for _, out in self._outboxes():
                out.push(Kind.BEAT)  # 5 bytes: even a stopped worker's queue barely grows
            await trio.sleep(BEAT_S)

    async def stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after the grace."""
        self.stopping = True
        sc = self.gw.cfg.server
        procs = [p for p in self._procs.values() if p.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(sc.shutdown_timeout_s + sc.close_timeout_s + 2.0):
            for proc in procs:
                await proc.wait()
        for proc in procs:
            if proc.returncode is None:
                log.warning("worker pid %d did not stop in time: killed", proc.pid)
                proc.kill()
                await proc.wait()


async def _end_when_exited(proc: trio.Process, scope: trio.CancelScope) -> None:
    """A worker that dies during its start or sync ends its supervision at once."""
    await proc.wait()
    scope.cancel()


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket: picks the port for ``port=0`` and
    holds it for the workers (it receives no connections: it never listens).

    First the port is bound once without SO_REUSEPORT, which fails while any process
    listens on it: SO_REUSEPORT alone would let a second cluster's workers join the
    first's, and the kernel would split new screens between two gateways of two
    epochs (found by an outside check)."""
    probe = bind(host, port)  # the single-process gateway's error if the port is taken
    try:
        port = probe.getsockname()[1]
    finally:
        probe.close()
    return bind(host, port, reuse_port=True)


async def serve_cluster(
    cfg: Config,
    *,
    install_signals: bool = False,
    log_level: str = "info",
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``app.serve`` with the screens served by ``cfg.server.workers`` processes."""
    gw, loaded = await prepare(cfg)
    sc = cfg.server
    passed = inherited_listeners()  # socket activation (serve/activation.py)
    shared = passed.get("public")
    reserved = shared if shared is not None else reserve_port(sc.host, sc.port)
    admin = passed.get("admin") or listen(sc.admin_host, sc.admin_port)
    gw.server.ports = (reserved.getsockname()[1], admin.getsockname()[1])
    gw.server.inherited = tuple(sorted(passed))
    cluster = Cluster(gw, sc.workers, gw.port, log_level, shared)
    gw.server.ready_checks["workers"] = cluster.ready
    gw.remote_screens = cluster.screens
    gw.metrics.registry.register(ClusterCollector(cluster.stats))
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gw.looplag.run)
            await restore(gw, loaded, nursery)
            async with trio.open_nursery() as http:
                nursery.start_soon(
                    accept_loop, admin, http, gw.server.handler.handle_admin, 0, gw.server.log
                )
                await nursery.start(cluster.run)
                if install_signals:  # the CLI owns the process (app.serve, memory.py)
                    tune_gc()
                    await nursery.start(
                        watch_signals, stop.set, "stopping the workers, then the ingest"
                    )
                await start_sources(gw, nursery)
                log.info(
                    "%d workers on http://%s:%d/ (WebSocket /ws), admin on http://%s:%d/metrics; "
                    "epoch %s",
                    sc.workers,
                    sc.host,
                    gw.port,
                    sc.admin_host,
                    gw.admin_port,
                    gw.store.epoch,
                )
                if passed:
                    log.info(
                        "listeners passed in by the starting process: %s (the workers "
                        "accept from the public one)",
                        ", ".join(gw.server.inherited),
                    )
                task_status.started(gw)
                await stop.wait()
                gw.server.fanout.stopping = True  # /readyz: not ready from now on
                await cluster.stop()
                if gw.persister is not None:
                    await gw.persister.final(gw.store)  # every screen is closed
                gw.server.stopped.set()
                nursery.cancel_scope.cancel()
    finally:
        close_socket(admin)
        close_socket(reserved)
        if gw.persister is not None:
            gw.persister.release()  # the state directory is free for the next gateway
    log.info("stopped")
