"""Faults: the broker restarts and hangs, the gateway is killed, a screen never reads.
Nothing is lost: every screen ends up holding exactly the gateway's state, and the
gateway's state is the broker's retained state."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.client import GatewayClient
from tests.broker import Mosquitto, free_port
from tests.conftest import stop_process
from tests.gw import url
from tests.ingest.test_mqtt import close_paho, mqtt_gateway, paho_publish
from tests.serve.httpget import http_get
from tests.serve.rawws import RawWs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def retained(n: int, version: int) -> list[tuple[str, bytes, bool]]:
    return [
        (f"telemetry/f/{i}", orjson.dumps({"v": i, "version": version}), True) for i in range(n)
    ]


def view(topics: dict[str, Any]) -> dict[str, Any]:
    return {t: m.fields for t, m in topics.items()}


async def test_broker_restart_and_hang_with_100_screens_lose_nothing(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    assert gw.mqtt is not None
    await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(50, 1))
    clients = [GatewayClient(url(gw), ["f/#"]) for _ in range(100)]

    def all_hold(pred: Callable[[Any], bool]) -> Callable[[], Any]:
        async def wait() -> None:
            for c in clients:
                await c.wait_until(pred)

        return wait

    async with trio.open_nursery() as nursery:
        for c in clients:
            await nursery.start(c.run)
        with trio.fail_after(15):
            await all_hold(lambda m: len(m.topics) == 50)()
        # 1. restart: stale while it is gone; after it, a device that publishes (here a
        # newer retained value) is fresh again, one whose retained copy only comes back
        # unchanged stays stale: that copy is not the device speaking
        await mosquitto.stop()
        with trio.fail_after(10):
            await all_hold(lambda m: all(t.stale for t in m.topics.values()))()
        await mosquitto.start()
        await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(50, 2)[:25])
        with trio.fail_after(15):
            await all_hold(
                lambda m: (
                    not any(m.topics[f"f/{i}"].stale for i in range(25))
                    and m.topics["f/0"].fields.get("version") == 2
                )
            )()
            while gw.store.stats.retained_old < 25:  # the other 25 came back unchanged
                await trio.sleep(0.02)
        assert all(gw.store.get(f"f/{i}").stale for i in range(25, 50))  # type: ignore[union-attr]
        await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(50, 2)[25:])
        with trio.fail_after(15):
            await all_hold(lambda m: not any(t.stale for t in m.topics.values()))()
        # 2. hang: detected (stale) within 1.5 keepalives, then recovered on SIGCONT
        mosquitto.pause()
        try:
            with trio.fail_after(10):
                await all_hold(lambda m: all(t.stale for t in m.topics.values()))()
        finally:
            mosquitto.resume()
        await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(50, 3))
        with trio.fail_after(15):
            await all_hold(
                lambda m: (
                    not any(t.stale for t in m.topics.values())
                    and m.topics["f/49"].fields.get("version") == 3
                )
            )()
        nursery.cancel_scope.cancel()
    expected = {f"f/{i}": {"v": i, "version": 3} for i in range(50)}
    assert {st.topic: st.fields for st in gw.store.states() if st.seq} == expected
    for c in clients:
        assert view(c.mirror.topics) == expected
        assert c.connects == 1 and c.mirror.gaps == 0  # no WebSocket dropped, no gap
    assert gw.server.stats.internal_errors == 0


async def start_gateway_process(port: int, broker: Mosquitto) -> trio.Process:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "run", "--port", str(port), "--admin-port", "0",
         "--mqtt", broker.url],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = b""
    with trio.fail_after(20):
        while not re.search(rb"listening on http://127\.0\.0\.1:\d+/", seen):
            chunk = await proc.stderr.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"the gateway exited: {seen.decode(errors='replace')}")
            seen += chunk
    return proc


def load(port: int, stop: threading.Event) -> int:
    """Non-retained updates as fast as paho sends them, until ``stop``."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="load")
    client.connect("127.0.0.1", port)
    client.loop_start()
    n = 0
    try:
        while not stop.is_set() and n < 200_000:
            client.publish(f"telemetry/f/{n % 50}", orjson.dumps({"v": -n}))
            n += 1
            if n % 200 == 0:
                stop.wait(0.01)
    finally:
        close_paho(client)
    return n


async def test_gateway_killed_under_load_every_screen_resyncs_snapshot_first(
    mosquitto: Mosquitto,
) -> None:
    await trio.to_thread.run_sync(paho_publish, mosquitto.port, retained(50, 1))
    port = free_port()
    proc = await start_gateway_process(port, mosquitto)
    clients = [
        GatewayClient(f"ws://127.0.0.1:{port}/ws", ["f/#"], backoff_cap_s=5.0) for _ in range(100)
    ]
    stop = threading.Event()
    second: trio.Process | None = None
    try:
        async with trio.open_nursery() as nursery:
            for c in clients:
                await nursery.start(c.run)
            with trio.fail_after(15):
                for c in clients:
                    await c.wait_until(lambda m: len(m.topics) == 50)
            loader = threading.Thread(target=load, args=(mosquitto.port, stop))
            loader.start()
            with trio.fail_after(10):  # under load: every screen is getting its updates
                for c in clients:
                    await c.wait_until(lambda m: any(t.fields["v"] < 0 for t in m.topics.values()))
            old_epoch = clients[0].mirror.epoch
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            stop.set()
            await trio.to_thread.run_sync(loader.join)
            killed = trio.current_time()
            second = await start_gateway_process(port, mosquitto)
            truth: dict[str, Any] = {}
            with trio.fail_after(10):  # the retained values come back from the broker
                while len(truth) < 50:
                    status, _, body = await http_get(port, "/api/snapshot?filter=f/%23")
                    assert status == 200
                    truth = {t: v["fields"] for t, v in orjson.loads(body)["topics"].items()}
                    await trio.sleep(0.05)
            assert truth == {f"f/{i}": {"v": i, "version": 1} for i in range(50)}  # retained
            done: dict[int, float] = {}
            with trio.move_on_after(30):
                while len(done) < len(clients):
                    for i, c in enumerate(clients):
                        if (
                            i not in done
                            and c.mirror.epoch not in (None, old_epoch)
                            and view(c.mirror.topics) == truth
                        ):
                            done[i] = trio.current_time() - killed
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        stop.set()
        await stop_process(proc)
        if second is not None:
            await stop_process(second)
    assert len(done) >= 99, f"{len(done)} of 100 consistent within 30 s"
    for c in clients:
        assert c.mirror.gaps == 0  # a snapshot before any delta, on every screen


async def test_a_screen_that_never_reads_is_closed_and_100_others_do_not_notice(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(
        server={"stall_s": 1.0, "tick_hz": 20, "send_buffer_bytes": 32768}
    )
    gw.store.apply("fast/t", {"v": 0, "pad": "x" * 2000}, gw.clock.wall())
    stalled = await RawWs.connect(gw.port, rcvbuf=4096)
    await stalled.recv_json()
    await stalled.send_json({"type": "subscribe", "id": "s", "filters": ["fast/#"], "rate_hz": 20})
    healthy = [await RawWs.connect(gw.port) for _ in range(100)]
    for ws in healthy:
        await ws.recv_json()
        await ws.send_json({"type": "subscribe", "id": "s", "filters": ["fast/#"], "rate_hz": 20})
    seqs: list[list[int]] = [[] for _ in healthy]

    async def read(i: int, ws: RawWs) -> None:
        while True:
            msg = await ws.recv_json()
            for item in msg["items"] if msg["type"] == "batch" else [msg]:
                if item["type"] == "delta":  # no gap: it builds on what the screen holds
                    assert item["base"] <= seqs[i][-1]
                if item["type"] in ("delta", "snapshot") and (
                    not seqs[i] or item["seq"] > seqs[i][-1]  # else already held: skipped
                ):
                    seqs[i].append(item["seq"])

    queued: list[int] = []
    async with trio.open_nursery() as nursery:
        for i, ws in enumerate(healthy):
            nursery.start_soon(read, i, ws)
        for n in range(1, 151):  # 50 changes a second for 3 s
            gw.store.apply("fast/t", {"v": n, "pad": f"{n:0>4000}"}, gw.clock.wall())
            queued += [s.out.queued_bytes for s in gw.server._sessions if s.reason is None]
            await trio.sleep(0.02)  # the pace of the changes, not a wait
        final = gw.store.get("fast/t").seq  # type: ignore[union-attr]
        with trio.move_on_after(10):  # every healthy screen gets up to date
            while not all(s and s[-1] == final for s in seqs):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert all(s and s[-1] == final for s in seqs)  # every healthy screen is up to date
    assert gw.hub.stats.slow == {"stalled": 1}  # the stalled one, closed with 4008
    assert max(queued) < 2 * 4300  # at most about two frames queued, never a backlog
    for ws in [stalled, *healthy]:
        ws.close()
