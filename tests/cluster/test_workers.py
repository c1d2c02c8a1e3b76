"""`gateway run --workers 2` as real processes on 127.0.0.1: one port served by two
workers with the parent's epoch and seqs, a screen moved between workers resumes with
deltas, a killed worker comes back while the other serves, ack_alarm reaches the
parent's alarm engine, SIGTERM stops everything and a killed parent leaves no worker."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketConnection, open_websocket_url

from gateway.core.protocol import Ack, Error, Welcome, decode_server
from gateway.core.state import Delta, Snapshot
from gateway.looplag import from_metrics
from gateway.serve.activation import passing
from tests.broker import free_port
from tests.conftest import stop_process
from tests.firsthour.test_metric_reasons import documented
from tests.serve.httpget import http_get

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[[alarms.rules]]
name = "warm"
filter = "#"
condition = "high"
field = "temperature"
threshold = -1000.0
"""


class Cluster:
    def __init__(self, proc: trio.Process, log: Path, port: int, admin: int) -> None:
        self.proc, self.log, self.port, self.admin = proc, log, port, admin

    def text(self) -> str:
        return self.log.read_text()

    @property
    def epoch(self) -> str:
        m = re.search(r"epoch ([0-9a-f]+)", self.text())
        assert m
        return m.group(1)

    async def workers(self) -> dict[int, tuple[bool, int, int | None]]:
        """Worker index -> (serving, pid, admin port), from the parent's /readyz."""
        _, _, body = await http_get(self.admin, "/readyz")
        detail = orjson.loads(body)["checks"]["workers"]["detail"]
        out = {}
        found = re.finditer(
            r"(\d+): (serving|starting|silent for \d+ s) \(pid (\d+), admin (\w+)\)", detail
        )
        for m in found:
            port = None if m.group(4) == "None" else int(m.group(4))
            out[int(m.group(1))] = (m.group(2) == "serving", int(m.group(3)), port)
        return out

    async def all_serving(self, other_than: dict[int, int] | None = None) -> dict[int, int]:
        """Wait until every worker serves (each with another pid than ``other_than``);
        returns index -> pid."""
        with trio.fail_after(30):
            while True:
                w = await self.workers()
                if w and all(s for s, _, _ in w.values()):
                    pids = {i: pid for i, (_, pid, _) in w.items()}
                    if not other_than or all(pids[i] != p for i, p in other_than.items()):
                        return pids
                await trio.sleep(0.05)

    async def metrics(self, port: int) -> str:
        _, _, body = await http_get(port, "/metrics")
        return body.decode()


@asynccontextmanager
async def cluster(
    tmp: Path, *args: str, listeners: dict[str, socket.socket] | None = None, **env: str
) -> AsyncIterator[Cluster]:
    """`gateway run --workers 2`; with ``listeners``, handed those sockets as systemd
    would (socket activation) instead of binding its port."""
    log = tmp / f"gateway-{time.monotonic_ns()}.log"
    config = tmp / "gateway.toml"
    config.write_text(CONFIG)
    port = free_port() if listeners is None else listeners["public"].getsockname()[1]
    prefix, kw = passing(listeners) if listeners else ([], {"env": {}})
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [*prefix, sys.executable, "-m", "gateway", "run", "--workers", "2", "--port",
             str(port), "--admin-port", "0", "--config", str(config), "--status-interval", "0",
             *args],
            stdout=out, stderr=out, cwd=ROOT, env={**os.environ, **env, **kw.pop("env")}, **kw,
        )  # fmt: skip
    try:
        with trio.fail_after(30):
            while not (m := re.search(r"admin on http://127\.0\.0\.1:(\d+)/", log.read_text())):
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited: {log.read_text()}")
                await trio.sleep(0.05)
        c = Cluster(proc, log, port, int(m.group(1)))
        await c.all_serving()
        yield c
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(proc)


async def send(ws: WebSocketConnection, msg: dict[str, Any]) -> None:
    await ws.send_message(orjson.dumps(msg).decode())


async def receive(ws: WebSocketConnection) -> list[Any]:
    return decode_server(await ws.get_message())


@asynccontextmanager
async def screen(
    port: int, worker: int | None = None, other: bool = False
) -> AsyncIterator[tuple[WebSocketConnection, Welcome]]:
    """A screen and its welcome: on ``worker`` (on any other one with ``other``), or
    wherever the kernel puts it (``worker=None``)."""
    for _ in range(60):
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws", connect_timeout=10) as ws:
            (welcome,) = await receive(ws)
            assert isinstance(welcome, Welcome)
            if worker is None or (welcome.worker == worker) != other:
                yield ws, welcome
                return
    raise AssertionError(f"60 connections never reached the worker wanted ({worker}, {other})")


def alive(pid: int) -> bool:
    """Running (a zombie, waiting for its parent to reap it, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_two_workers_one_port_one_epoch_resume_across_and_restart(tmp_path: Path) -> None:
    async with cluster(tmp_path, "--simulate", "40") as c:
        epoch = c.epoch
        workers = await c.workers()
        assert len(workers) == 2
        # connections on the one port reach both workers, with the parent's epoch
        seen: set[int] = set()
        for _ in range(60):
            async with screen(c.port) as (_, welcome):
                pass
            assert welcome.epoch == epoch
            assert welcome.worker is not None
            seen.add(welcome.worker)
            if seen == {0, 1}:
                break
        assert seen == {0, 1}

        # the parent serves no screen itself, but counts the workers' (metrics, status)
        async with screen(c.port, 0) as _, screen(c.port, 1) as _:
            with trio.fail_after(10):
                while "gateway_cluster_screens 2.0" not in await c.metrics(c.admin):
                    await trio.sleep(0.1)

        # a screen on one worker takes its snapshots ...
        held: dict[str, int] = {}
        async with screen(c.port) as (ws, welcome):
            first = welcome.worker
            await send(ws, {"type": "subscribe", "id": "s", "filters": ["#"]})
            with trio.fail_after(20):
                while len(held) < 40:
                    for msg in await receive(ws):
                        if isinstance(msg, Snapshot | Delta):
                            held[msg.topic] = msg.seq
        # ... and resumes on the other one with deltas only
        deltas = 0
        resumed = None
        async with screen(c.port, first, other=True) as (ws, welcome):
            assert welcome.epoch == epoch and welcome.worker != first
            resume = {"type": "resume", "epoch": epoch, "topics": held}
            await send(ws, resume)
            await send(ws, {"type": "subscribe", "id": "s", "filters": ["#"]})
            with trio.fail_after(20):
                while deltas < 40:
                    for msg in await receive(ws):
                        if isinstance(msg, Ack) and msg.op == "resume":
                            resumed = msg.resumed
                        assert not isinstance(msg, Snapshot), f"a snapshot after resume: {msg}"
                        if isinstance(msg, Delta):
                            # applicable to what the screen holds: no gap, no resync
                            assert msg.base <= held[msg.topic], (msg, held[msg.topic])
                            held[msg.topic] = max(held[msg.topic], msg.seq)
                            deltas += 1
        assert resumed is True

        # ack_alarm on a worker is decided by the parent's alarm engine
        alarm = f"$alarms/warm/{sorted(held)[0]}"
        async with screen(c.port) as (ws, _):
            await send(ws, {"type": "ack_alarm", "id": "a1", "alarms": [alarm]})
            with trio.fail_after(10):
                (answer,) = await receive(ws)
        assert isinstance(answer, Ack) and answer.op == "ack_alarm", answer
        assert answer.alarms == (alarm,)
        async with screen(c.port) as (ws, _):  # a refusal comes back the same way
            await send(ws, {"type": "ack_alarm", "id": "a2", "alarms": ["$alarms/warm/none"]})
            with trio.fail_after(10):
                (refusal,) = await receive(ws)
        assert isinstance(refusal, Error) and refusal.code == "unknown_alarm", refusal
        assert refusal.ref == "a2"

        # a killed worker: the port stays served, the worker comes back, resynced
        pids = await c.all_serving()
        killed = next(iter(pids))
        killed_pid = pids[killed]
        os.kill(killed_pid, signal.SIGKILL)
        with trio.fail_after(10):
            # a connection in a dying worker's accept queue or handshake is lost with
            # it (docs/deployment.md): the port is served by the others once it is gone
            while alive(killed_pid):
                await trio.sleep(0.01)
        for _ in range(10):
            async with screen(c.port) as (_, welcome):
                assert welcome.epoch == epoch
        pids = await c.all_serving(other_than={killed: pids[killed]})
        assert f"worker {killed} (pid {killed_pid}) exited with -9; restarting it" in c.text()
        async with screen(c.port, killed) as (_, welcome):
            assert welcome.epoch == epoch
        parent = await c.metrics(c.admin)
        assert 'gateway_cluster_worker_restarts_total{reason="exited"} 1.0' in parent
        assert 'gateway_cluster_workers{state="serving"} 2.0' in parent
        cluster_rows = {k: v for k, v in documented().items() if k.startswith("gateway_cluster_")}
        exported: dict[str, dict[str, set[str]]] = {}
        for family in text_string_to_metric_families(parent):
            if family.name.startswith("gateway_cluster_"):
                for sample in family.samples:
                    for label, value in sample.labels.items():
                        exported.setdefault(family.name, {}).setdefault(label, set()).add(value)
        assert exported == cluster_rows  # docs/metrics.md lists the labels exported
        lag = from_metrics(parent)
        assert lag.max < 0.5, lag  # the parent's loop: ingest, replication, no stalls
        # each worker serves its own /metrics on its admin port; no loop stalled
        for _, _, admin in (await c.workers()).values():
            assert admin is not None
            text = await c.metrics(admin)
            assert "gateway_websocket_connections" in text
            assert from_metrics(text).max < 0.5

        # SIGTERM: every worker stops, then the parent, exit 0
        c.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await c.proc.wait() == 0
        assert not any(alive(pid) for pid in pids.values())
        assert "every client was told to reconnect (1012)" in c.text()
        m = re.search(r"(\d+) screens at most", c.text())
        assert m and int(m.group(1)) >= 2, "the exit summary counts the workers' screens"


async def test_workers_accept_from_the_socket_passed_to_the_parent(tmp_path: Path) -> None:
    """Socket activation with workers: the parent hands the passed-in listener to
    every worker (no SO_REUSEPORT port of their own); both accept from it, a killed
    worker's successor too, and a screen that connects while no gateway runs waits in
    the socket's queue and is welcomed by the next cluster."""
    held = socket.create_server(("127.0.0.1", 0), backlog=64)  # the supervisor's socket
    port = held.getsockname()[1]
    with held:
        async with cluster(tmp_path, "--simulate", "20", listeners={"public": held}) as c:
            assert "listeners passed in by the starting process: public" in c.text()
            seen = set()
            for _ in range(60):
                async with screen(port) as (_, welcome):
                    seen.add(welcome.worker)
                if seen == {0, 1}:
                    break
            assert seen == {0, 1}
            pids = await c.all_serving()
            os.kill(pids[0], signal.SIGKILL)
            await c.all_serving(other_than={0: pids[0]})
            async with screen(port, 0) as (_, welcome):  # the new worker 0 accepts too
                assert welcome.worker == 0
            c.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await c.proc.wait() == 0
        # no gateway runs: the connection is queued by the kernel, not refused
        waiting = trio.socket.socket()
        with waiting:
            with trio.fail_after(5):
                await waiting.connect(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            await waiting.send(
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            async with cluster(tmp_path, listeners={"public": held}):
                got = b""
                with trio.fail_after(30):
                    while b"welcome" not in got:
                        chunk = await waiting.recv(65536)
                        assert chunk, f"closed: {got!r}"
                        got += chunk
                assert got.startswith(b"HTTP/1.1 101 ")


async def test_a_killed_parent_leaves_no_worker(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        pids = await c.all_serving()
        c.proc.send_signal(signal.SIGKILL)
        await c.proc.wait()
        with trio.fail_after(20):
            while any(alive(pid) for pid in pids.values()):
                await trio.sleep(0.05)


async def test_a_worker_that_cannot_keep_up_is_restarted_not_buffered(tmp_path: Path) -> None:
    """A stopped worker (SIGSTOP: it reads nothing) fills its capped queue; the parent
    kills it and starts another with a full sync, and the other worker serves on."""
    cap = 1 << 20
    # not killed as hung first (the next test): the queue's cap is what this one tests
    env = {
        "GATEWAY_SERVER_WORKER_CHANNEL_BYTES": str(cap),
        "GATEWAY_SERVER_WORKER_SILENT_S": "3600",
    }
    async with cluster(tmp_path, "--simulate", "1000", **env) as c:
        pids = await c.all_serving()
        stopped = next(iter(pids))
        os.kill(pids[stopped], signal.SIGSTOP)
        queued = 0.0
        killed = f"worker {stopped} (pid {pids[stopped]}) was killed for falling behind"
        with trio.fail_after(60):
            while killed not in c.text():
                text = await c.metrics(c.admin)
                m = re.search(r"^gateway_cluster_channel_queued_bytes (\S+)$", text, re.M)
                assert m
                queued = max(queued, float(m.group(1)))
                await trio.sleep(0.05)
        assert queued <= cap  # the queue never passed its cap
        async with screen(c.port, 1 - stopped) as (_, welcome):
            assert welcome.worker == 1 - stopped
        await c.all_serving(other_than={stopped: pids[stopped]})
        parent = await c.metrics(c.admin)
        m = re.search(
            r'^gateway_cluster_worker_restarts_total{reason="overflow"} (\S+)$', parent, re.M
        )
        assert m and float(m.group(1)) >= 1
        assert from_metrics(parent).max < 0.5


async def test_a_hung_worker_is_replaced_and_a_hung_parent_makes_workers_unready(
    tmp_path: Path,
) -> None:
    """A stopped worker keeps its listening socket: before, the kernel went on handing
    it half the new connections, which hung, and /readyz said "2 of 2 serving" until
    its queue filled (minutes at the default cap). A stopped parent left the workers
    ready, serving data that no longer aged into "stale". (Both found by an outside
    check.) Now the parent kills a worker silent for worker_silent_s and starts
    another; a worker that does not hear the parent says it is not ready."""
    env = {"GATEWAY_SERVER_WORKER_SILENT_S": "3"}
    async with cluster(tmp_path, "--simulate", "200", **env) as c:
        pids = await c.all_serving()
        stopped = next(iter(pids))
        os.kill(pids[stopped], signal.SIGSTOP)
        with trio.fail_after(10):  # not counted as serving while silent
            while f"{stopped}: silent for" not in (await http_get(c.admin, "/readyz"))[2].decode():
                await trio.sleep(0.2)
        await c.all_serving(other_than={stopped: pids[stopped]})
        assert f"worker {stopped} (pid {pids[stopped]}) was killed as hung" in c.text()
        m = re.search(
            r'^gateway_cluster_worker_restarts_total{reason="hung"} (\S+)$',
            await c.metrics(c.admin),
            re.M,
        )
        assert m and float(m.group(1)) == 1
        for _ in range(6):  # every new connection is answered
            async with screen(c.port) as (_, welcome):
                assert welcome.epoch == c.epoch
        # the parent stops: each worker says so on its /readyz, and is ready again after
        workers = await c.workers()
        admin_ports = [port for _, _, port in workers.values() if port is not None]
        assert len(admin_ports) == 2
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            with trio.fail_after(15):
                for port in admin_ports:
                    while (await http_get(port, "/readyz"))[0] != 503:
                        await trio.sleep(0.2)
            _, _, body = await http_get(admin_ports[0], "/readyz")
            assert b"no message from the parent" in body
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        with trio.fail_after(10):
            for port in admin_ports:
                while (await http_get(port, "/readyz"))[0] != 200:
                    await trio.sleep(0.2)


async def test_the_parent_keeps_the_epoch_over_a_graceful_restart(tmp_path: Path) -> None:
    """SIGTERM: the workers close their screens, then the parent writes its final
    checkpoint; the next start (workers again) serves the same epoch and seqs."""
    env = {"GATEWAY_PERSIST_STATE_DIR": str(tmp_path / "state")}
    async with cluster(tmp_path, "--simulate", "20", **env) as c:
        epoch = c.epoch
        async with screen(c.port) as (ws, welcome):
            assert welcome.epoch == epoch
        c.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await c.proc.wait() == 0
        assert "final checkpoint" in c.text()
    async with cluster(tmp_path, **env) as c:
        assert c.epoch == epoch
        async with screen(c.port) as (ws, welcome):
            assert welcome.epoch == epoch
            await send(ws, {"type": "subscribe", "id": "s", "filters": ["#"]})
            topics = set()
            with trio.fail_after(10):
                while len(topics) < 20:  # the restored state, with no device running
                    topics |= {m.topic for m in await receive(ws) if isinstance(m, Snapshot)}


async def test_a_second_cluster_cannot_take_a_clusters_port(tmp_path: Path) -> None:
    """SO_REUSEPORT alone let a second `--workers` gateway join the first's port: the
    kernel split new screens between two gateways of two epochs (found by an outside
    check). It is refused as a single-process gateway is."""
    async with cluster(tmp_path) as c:
        with trio.fail_after(30):  # before the fix the second one served for good
            second = await trio.run_process(
                [sys.executable, "-m", "gateway", "run", "--workers", "2", "--port", str(c.port),
                 "--admin-port", "0", "--status-interval", "0"],
                capture_stderr=True, check=False, cwd=ROOT,
            )  # fmt: skip
        assert second.returncode == 1, second.stderr.decode()
        assert f"cannot listen on 127.0.0.1:{c.port}" in second.stderr.decode()
        assert "Address already in use" in second.stderr.decode()
        epochs = set()
        for _ in range(8):
            async with screen(c.port) as (_, welcome):
                epochs.add(welcome.epoch)
        assert epochs == {c.epoch}


async def test_a_worker_whose_admin_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    """It printed a 40-line traceback at every restart (found by an outside check)."""
    for _ in range(20):  # three free ports in a row: admin, worker 0, worker 1
        admin = free_port()
        taken = socket.socket()
        try:
            taken.bind(("127.0.0.1", admin + 1))
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", admin + 2))
            break
        except OSError:
            taken.close()
    else:
        raise AssertionError("no three free ports in a row")
    taken.listen()
    with taken:
        log = tmp_path / "cluster.log"
        config = tmp_path / "gateway.toml"
        config.write_text(CONFIG)
        with log.open("wb") as out:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway", "run", "--workers", "2", "--port",
                 str(free_port()), "--admin-port", str(admin), "--status-interval", "0"],
                stdout=out, stderr=out, cwd=ROOT,
            )  # fmt: skip
        try:
            line = f"worker cannot serve: cannot listen on 127.0.0.1:{admin + 1}"
            with trio.fail_after(30):
                while log.read_text().count(line) < 2:  # and again at its restart
                    await trio.sleep(0.1)
            assert "Traceback" not in log.read_text()
        finally:
            with trio.CancelScope(shield=True):
                await stop_process(proc)
