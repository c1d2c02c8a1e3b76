"""Real restarts of a gateway process with a state directory: what survives a graceful
stop (SIGTERM: the epoch, the seqs, every topic) and a kill (SIGKILL: every topic of
the last checkpoint, under a new epoch), and a kill in the middle of a checkpoint."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio

from gateway.client import GatewayClient
from gateway.core import snapshotfile
from gateway.core.state import Delta, Snapshot
from tests.broker import Mosquitto, free_port
from tests.conftest import stop_process
from tests.ingest.test_mqtt import paho_publish
from tests.reliability.test_faults import retained
from tests.serve.httpget import http_get

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(self, proc: trio.Process, log: Path, port: int, admin_port: int) -> None:
        self.proc, self.log, self.port, self.admin_port = proc, log, port, admin_port

    def text(self) -> str:
        return self.log.read_text()

    async def snapshot(self, flt: str = "#") -> dict[str, Any]:
        status, _, body = await http_get(
            self.port, "/api/snapshot?filter=" + flt.replace("#", "%23")
        )
        assert status == 200
        result: dict[str, Any] = orjson.loads(body)
        return result

    async def metric(self, name: str) -> float:
        _, _, body = await http_get(self.admin_port, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not exported")


@asynccontextmanager
async def gateway_process(
    tmp: Path, port: int, state_dir: Path, *args: str, interval_s: float = 0.2, **env: str
) -> AsyncIterator[GatewayProcess]:
    """`gateway run` with [persist]; stopped (SIGTERM, then SIGKILL) when the block ends
    unless the test already stopped it."""
    log = tmp / f"gateway-{time.monotonic_ns()}.log"
    environ = {
        **os.environ,
        "GATEWAY_PERSIST_STATE_DIR": str(state_dir),
        "GATEWAY_PERSIST_INTERVAL_S": str(interval_s),
        **env,
    }
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway", "run", "--port", str(port), "--admin-port", "0",
             *args],
            stdout=out, stderr=out, cwd=ROOT, env=environ,
        )  # fmt: skip
    try:
        # with a broker, until it acknowledged the subscriptions: the tests publish
        # messages that are not retained, and one published before would be missed
        ready = "subscriptions acknowledged by the broker" if "--mqtt" in args else "admin on"
        with trio.fail_after(30):
            while not (
                (m := re.search(r"admin on http://127\.0\.0\.1:(\d+)/", text := log.read_text()))
                and ready in text
            ):
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited: {log.read_text()}")
                await trio.sleep(0.05)
        yield GatewayProcess(proc, log, port, int(m.group(1)))
    finally:
        with trio.CancelScope(shield=True):  # also when the test's nursery is cancelled
            await stop_process(proc)


async def graceful_stop(gw: GatewayProcess) -> None:
    gw.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await gw.proc.wait() == 0
    assert "final checkpoint" in gw.text()


async def kill(gw: GatewayProcess) -> None:
    gw.proc.send_signal(signal.SIGKILL)
    await gw.proc.wait()


def checkpointed(state_dir: Path) -> dict[str, int]:
    """Topic -> seq in the checkpoint on disk now (empty if there is none yet)."""
    try:
        ckpt = snapshotfile.parse((state_dir / "state.ckpt").read_bytes())
    except FileNotFoundError:
        return {}
    out: list[Any] = []
    for _ in snapshotfile.decode_topics(ckpt.sections["topics"], out):
        pass
    return {st.topic: st.seq for st in out}


async def checkpoint_holds(gw: GatewayProcess, state_dir: Path) -> None:
    """Wait until the checkpoint on disk holds every topic as /api/snapshot shows it now."""
    now = {t: v["seq"] for t, v in (await gw.snapshot())["topics"].items()}
    with trio.fail_after(20):
        while True:
            held = await trio.to_thread.run_sync(checkpointed, state_dir)
            if all(held.get(t, 0) >= seq for t, seq in now.items()):
                return
            await trio.sleep(0.05)


async def test_a_device_that_spoke_once_without_retain_survives_a_kill_and_a_graceful_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state, port = tmp_path / "state", free_port()
    url = mosquitto.url
    async with gateway_process(tmp_path, port, state, "--mqtt", url) as gw:
        await mosquitto.publish("telemetry/battery/7", b'{"v": 3.61, "ts": 1700000000}')
        with trio.fail_after(10):
            while "battery/7" not in (await gw.snapshot())["topics"]:
                await trio.sleep(0.05)
        before = (await gw.snapshot())["topics"]["battery/7"]
        first_epoch = (await gw.snapshot())["epoch"]
        assert before["fields"] == {"v": 3.61} and not before["stale"]
        await checkpoint_holds(gw, state)
        await kill(gw)
    async with gateway_process(tmp_path, port, state, "--mqtt", url) as gw:
        snap = await gw.snapshot()
        after_kill = snap["topics"]["battery/7"]
        assert snap["epoch"] != first_epoch and "new epoch" in gw.text()
        assert after_kill["stale"] and after_kill["fields"] == before["fields"]
        assert after_kill["ts"] == 1700000000 and after_kill["seq"] == before["seq"] + 1
        second_epoch = snap["epoch"]
        await graceful_stop(gw)
    async with gateway_process(tmp_path, port, state, "--mqtt", url) as gw:
        snap = await gw.snapshot()
        assert snap["epoch"] == second_epoch and f"epoch {second_epoch} kept" in gw.text()
        assert snap["topics"]["battery/7"] == after_kill  # stale already: nothing changed
        assert await gw.metric("gateway_restored_topics") == 1


def view(c: GatewayClient) -> dict[str, Any]:
    return {t: (m.seq, m.fields, m.stale) for t, m in c.mirror.topics.items()}


def truth_of(snap: dict[str, Any]) -> dict[str, Any]:
    return {t: (v["seq"], v["fields"], v["stale"]) for t, v in snap["topics"].items()}


async def test_100_screens_resume_by_delta_over_a_graceful_restart_and_resync_after_a_kill(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state, port = tmp_path / "state", free_port()
    await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(50, 1))
    snapshots = [0] * 100

    def counter(i: int) -> Any:
        def on_update(msg: Snapshot | Delta) -> None:
            if isinstance(msg, Snapshot):
                snapshots[i] += 1

        return on_update

    clients = [
        GatewayClient(f"ws://127.0.0.1:{port}/ws", ["f/#"], backoff_cap_s=2.0, on_update=counter(i))
        for i in range(100)
    ]

    async def converge(gw: GatewayProcess, done: Any) -> dict[str, Any]:
        with trio.fail_after(30):
            while True:
                snap = await gw.snapshot("f/#")
                if done(snap):
                    break
                await trio.sleep(0.05)
            truth = truth_of(snap)
            for c in clients:  # on this run's epoch: a restored view may equal the last one's
                await c.wait_until(lambda m, c=c: m.epoch == snap["epoch"] and view(c) == truth)
        return snap

    def fresh(version_of: dict[int, int], stale: range = range(0)) -> Any:
        def done(snap: dict[str, Any]) -> bool:
            topics = snap["topics"]
            return len(topics) == 51 and all(
                topics[f"f/{i}"]["stale"] == (i in stale)
                and topics[f"f/{i}"]["fields"]["version"] == v
                for i, v in version_of.items()
            )

        return done

    async with trio.open_nursery() as nursery:
        async with gateway_process(tmp_path, port, state, "--mqtt", mosquitto.url) as gw:
            await mosquitto.publish("telemetry/f/once", b'{"v": 1}')  # never retained
            for c in clients:
                await nursery.start(c.run)
            await converge(gw, fresh({i: 1 for i in range(50)}))
            epoch = clients[0].mirror.epoch
            await graceful_stop(gw)
        # while it is down, ten devices change (retained: the broker hands them over)
        await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(10, 2))
        sent_before = snapshots.copy()
        async with gateway_process(tmp_path, port, state, "--mqtt", mosquitto.url) as gw:
            versions = {i: 2 if i < 10 else 1 for i in range(50)}
            # these devices spoke once (no interval learned): restored stale; the ten
            # that changed are fresh with their new retained value, the other forty
            # stay stale: the broker's unchanged retained copy is not the device speaking
            snap = await converge(gw, fresh(versions, stale=range(10, 50)))
            assert snap["epoch"] == epoch
            assert snap["topics"]["f/once"]["stale"]  # not retained: restored, stale
            assert snapshots == sent_before  # not one snapshot: every screen resumed
            assert all(c.resumes == 1 and c.connects == 2 and c.mirror.gaps == 0 for c in clients)
            await checkpoint_holds(gw, state)
            await kill(gw)
        async with gateway_process(tmp_path, port, state, "--mqtt", mosquitto.url) as gw:
            snap = await converge(gw, fresh(versions, stale=range(50)))  # nothing new
            assert snap["epoch"] != epoch
            assert all(c.mirror.epoch == snap["epoch"] for c in clients)
            # a new epoch: every screen dropped its copy and took a snapshot of every topic
            assert all(n - b >= 51 for n, b in zip(snapshots, sent_before, strict=True))
            assert all(c.mirror.gaps == 0 for c in clients)
            nursery.cancel_scope.cancel()


def kill_when_writing(pid: int, tmp: Path, seconds: float) -> bool:
    """Busy-wait for the temporary checkpoint file, then SIGKILL at once."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if tmp.exists():
            os.kill(pid, signal.SIGKILL)
            return True
    return False


async def test_a_kill_during_a_checkpoint_leaves_the_previous_one_usable(tmp_path: Path) -> None:
    state, port = tmp_path / "state", free_port()
    sim = {"GATEWAY_SIMULATOR_RATE_HZ": "0.02"}
    ckpt, tmp = state / "state.ckpt", state / "state.ckpt.tmp"
    for _attempt in range(5):
        async with gateway_process(
            tmp_path, port, state, "--simulate", "20000", interval_s=0.1, **sim
        ) as gw:
            with trio.fail_after(20):
                while not await trio.to_thread.run_sync(checkpointed, state):
                    await trio.sleep(0.05)
            killed = await trio.to_thread.run_sync(kill_when_writing, gw.proc.pid, tmp, 10.0)
            await gw.proc.wait()
        if killed and tmp.exists():
            break  # killed with a checkpoint half-written
    else:
        raise AssertionError("never caught the gateway in the middle of a checkpoint")
    previous = snapshotfile.parse(ckpt.read_bytes())  # whole, and its checksum holds
    n = previous.meta["topics"]
    assert n > 0
    async with gateway_process(tmp_path, port, state, "--simulate", "20000", **sim) as gw:
        assert f"restoring {n} topics" in gw.text() and "new epoch" in gw.text()
        assert await gw.metric("gateway_restored_topics") == n
        assert len((await gw.snapshot())["topics"]) >= n
        assert not any(p.name.startswith("state.ckpt.bad") for p in state.iterdir())


ALARM_RULE = """
[[alarms.rules]]
name = "hot"
filter = "plant/#"
condition = "high"
field = "t"
threshold = 50
hysteresis = 5
severity = "critical"
"""
HOT = "$alarms/hot/plant/oven"


async def test_an_acknowledged_alarm_survives_a_kill_and_a_graceful_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from tests.serve.rawws import RawWs

    state, port = tmp_path / "state", free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(ALARM_RULE)
    args = ("--config", str(config), "--mqtt", mosquitto.url)

    async def alarms(gw: GatewayProcess, query: str = "") -> list[dict[str, Any]]:
        status, _, body = await http_get(port, "/api/alarms" + query)
        assert status == 200
        found: list[dict[str, Any]] = orjson.loads(body)["alarms"]
        return found

    async with gateway_process(tmp_path, port, state, *args) as gw:
        await mosquitto.publish("telemetry/plant/oven", b'{"t": 60}')
        with trio.fail_after(10):
            while not await alarms(gw):
                await trio.sleep(0.05)
        ws = await RawWs.connect(port)
        try:
            await ws.recv_json()  # welcome
            await ws.send_json({"type": "ack_alarm", "id": "op-1", "alarms": [HOT]})
            assert (await ws.recv_json())["type"] == "ack"
        finally:
            ws.close()
        before = await alarms(gw)
        assert [(a["alarm"], a["state"], a["acked_by"]) for a in before] == [
            (HOT, "active_acked", "anonymous")
        ]
        with trio.fail_after(20):  # the periodic checkpoint holds the acknowledgement
            while checkpointed(state).get(HOT, 0) < before[0]["seq"]:
                await trio.sleep(0.05)
        await kill(gw)
    for restart in ("kill", "graceful"):
        async with gateway_process(tmp_path, port, state, *args) as gw:
            assert await alarms(gw) == before, restart  # state, raise, acknowledgement
            assert await gw.metric('gateway_alarms_active{severity="critical"}') == 1
            assert await gw.metric('gateway_alarms_unacknowledged{severity="critical"}') == 0
            if restart == "kill":
                await graceful_stop(gw)
                continue
            await mosquitto.publish("telemetry/plant/oven", b'{"t": 40}')  # the value returns
            with trio.fail_after(10):
                while await alarms(gw):
                    await trio.sleep(0.05)
            (after,) = await alarms(gw, "?all=1")
            assert (after["state"], after["acked_by"], after["cleared_value"]) == (
                "normal", "anonymous", 40,
            )  # fmt: skip
