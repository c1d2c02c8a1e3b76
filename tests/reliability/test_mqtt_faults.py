"""Broker faults under load: a fleet publishing 5,000 msg/s, 100 screens connected.

For every fault (SIGTERM, SIGKILL, SIGSTOP/SIGCONT, a restart, a TCP reset, the broker
refusing us for lack of connection slots or for bad credentials) the gateway never
exits, marks its topics stale, keeps serving (/healthz answers, no screen is
dropped), says not ready (/readyz 503) until it is connected again (200), and then
every screen converges on the gateway's state, which is the broker's. Loop lag is
measured across each fault and its recovery. The simulator (the same paho driver)
must survive each fault too and stop cleanly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.client import GatewayClient
from gateway.looplag import from_metrics
from tests.broker import Mosquitto
from tests.conftest import stop_process
from tests.reliability.mqtt_rig import FAULTS, ROOT, Rig
from tests.serve.httpget import http_get

PORTS = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)/.*admin on http://127\.0\.0\.1:(\d+)/")
#: generous: the budget is a 100 ms max, but the gateway shares this process with the
#: test's screens and this machine with others (at a load of 9 on 2 cores the maxima
#: reached 0.6 s); the stalls this catches took seconds (13.5 s before the fix)
LAG_MAX_S = 1.0
RELAYED = ("reset", "refuse_max_connections", "refuse_bad_credentials")


def all_stale(m: Any) -> bool:
    return bool(m.topics) and all(t.stale for t in m.topics.values())


@pytest.mark.parametrize("fault", FAULTS)
async def test_broker_fault_under_load_the_gateway_serves_on_and_screens_converge(
    fault: str, gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    rig = Rig(tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            # the signals hit the broker the gateway is connected to; resets and
            # refusals need the relay in between
            await rig.start(nursery, gateway_factory, relay=fault in RELAYED)
            gw = rig.gw
            assert gw is not None and gw.mqtt is not None
            await rig.start_fleet()
            await rig.add_screens(nursery, 100)
            await rig.wait_for_data()
            rig.settled()
            connects = gw.mqtt.stats.connects
            with gw.looplag.window() as lag:
                broke = time.time()  # data measured after this came after the recovery
                await rig.inject(fault)
                under = [st for st in gw.store.states() if st.topic.startswith("berlin/line1/")]
                assert under and all(st.stale for st in under)  # marked at once
                with trio.fail_after(10):
                    for c in rig.screens:
                        await c.wait_until(all_stale)
                assert await rig.ready() == 503
                assert await rig.healthy()
                await rig.while_down(fault)
                assert await rig.ready() == 503 and await rig.healthy()
                await rig.recover(fault)
                await rig.wait_for_data(since=broke)  # fresh data on every screen
            print(f"\n{fault}: loop lag {lag.summary()}, ingest {dict(gw.mqtt.stats.messages)}")
            assert lag.max < LAG_MAX_S, lag.summary()
            assert gw.mqtt.stats.connects > connects
            assert await rig.stop_fleet() == "stopped cleanly"  # the simulator survived too
            # every device says goodbye (the simulator's clean stop), then every screen
            # holds the gateway's state
            truth = await rig.converge()
            assert not any(stale for _, _, stale in truth.values())
            assert all(c.connects == 1 for c in rig.screens)  # no screen was dropped
            assert gw.server.stats.internal_errors == 0
            nursery.cancel_scope.cancel()
    finally:
        await rig.close()


async def test_kill_term_of_the_broker_while_devices_sim_publishes_leaves_the_gateway_running(
    tmp_path: Path,
) -> None:
    """The reproduction of the bug: processes only, as people run them."""
    broker = Mosquitto(tmp_path / "mosquitto")
    await broker.start()
    env = {**os.environ, "GATEWAY_MQTT_RECONNECT_MAX_S": "1", "GATEWAY_MQTT_KEEPALIVE_S": "5"}
    gateway = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "run", "--port", "0", "--admin-port", "0",
         "--mqtt", broker.url],
        stderr=subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    sim_log = tmp_path / "devices-sim.log"
    with sim_log.open("wb") as log:
        sim = await trio.lowlevel.open_process(
            [sys.executable, "-m", "devices_sim", "--mqtt", broker.url, "--devices", "1000",
             "--rate", "10", "--quiet"],
            stderr=log, cwd=ROOT,
        )  # fmt: skip
    stderr = bytearray()
    try:
        with trio.fail_after(90):
            await _broker_stop_scenario(broker, gateway, sim, stderr)
    finally:
        with trio.CancelScope(shield=True):  # bounded waits, also when cancelled
            await stop_process(sim)
            await stop_process(gateway)
            await broker.stop()
    assert gateway.returncode == 0, stderr.decode(errors="replace")
    assert "Traceback" not in stderr.decode(errors="replace")
    assert "Traceback" not in sim_log.read_text()


async def _broker_stop_scenario(
    broker: Mosquitto, gateway: trio.Process, sim: trio.Process, stderr: bytearray
) -> None:
    async with trio.open_nursery() as nursery:
        port, admin = await nursery.start(_read_ports, gateway, stderr)
        screens = [GatewayClient(f"ws://127.0.0.1:{port}/ws", ["berlin/line1/#"]) for _ in range(5)]
        for c in screens:
            await nursery.start(c.run)
        with trio.fail_after(20):
            for c in screens:
                await c.wait_until(lambda m: len(m.topics) > 50)
        before = from_metrics((await http_get(admin, "/metrics"))[2].decode())
        await trio.run_process(["kill", "-TERM", str(broker.proc.pid)])  # type: ignore[union-attr]
        await broker.proc.wait()  # type: ignore[union-attr]
        with trio.fail_after(10):
            for c in screens:
                await c.wait_until(all_stale)
        for _ in range(10):  # down for 2 s: alive, serving, not ready
            assert gateway.poll() is None, stderr.decode(errors="replace")
            assert (await http_get(port, "/healthz"))[0] == 200
            assert (await http_get(port, "/readyz"))[0] == 503
            await trio.sleep(0.2)
        await broker.start()
        back = time.time()
        with trio.fail_after(20):
            while (await http_get(port, "/readyz"))[0] != 200:
                await trio.sleep(0.1)
        with trio.fail_after(20):  # fresh data, sent by the devices after the restart
            for c in screens:
                await c.wait_until(
                    lambda m: all(
                        not t.stale and t.ts is not None and t.ts > back for t in m.topics.values()
                    )
                )
        lag = from_metrics((await http_get(admin, "/metrics"))[2].decode()).minus(before)
        print(f"\nkill -TERM of the broker, gateway process loop lag: {lag.summary()}")
        assert lag.max_bound() <= LAG_MAX_S, lag.summary()  # a bucket bound
        assert gateway.poll() is None and sim.poll() is None
        assert all(c.connects == 1 for c in screens)
        nursery.cancel_scope.cancel()


async def _read_ports(
    proc: trio.Process, out: bytearray, *, task_status: trio.TaskStatus[tuple[int, int]]
) -> None:
    """The gateway's ports from its first log line; then keep its stderr drained."""
    assert proc.stderr is not None
    started = False
    with trio.fail_after(20):
        while not started:
            chunk = await proc.stderr.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"the gateway exited: {out.decode(errors='replace')}")
            out += chunk
            m = PORTS.search(out)
            if m:
                task_status.started((int(m.group(1)), int(m.group(2))))
                started = True
    while chunk := await proc.stderr.receive_some(65536):
        out += chunk
