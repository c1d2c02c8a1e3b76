"""The simulator's MQTT transport against a real mosquitto, read by a real gateway."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio

import devices_sim.mqtt
from devices_sim.fleet import Fleet, FleetConfig
from devices_sim.mqtt import MqttPublisher
from gateway.app import Gateway
from gateway.client import GatewayClient
from gateway.ingest.paho_trio import parse_url
from tests.broker import Mosquitto
from tests.conftest import require_binary, stop_process
from tests.ingest.test_mqtt import until_subscribed
from tests.ingest.test_paho_faults import planned_broker

FAST = {"keepalive_s": 2.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}


async def mqtt_gateway(factory: Callable[..., Any], broker: Mosquitto) -> Gateway:
    gw: Gateway = await factory(mqtt={"url": broker.url, **FAST})
    await until_subscribed(gw)
    return gw


def presence(gw: Gateway, fleet: Fleet) -> list[bool | None]:
    return [st.online if (st := gw.store.get(d.path)) else None for d in fleet.devices]


async def test_per_device_connections_statuses_and_last_wills(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    fleet = Fleet(FleetConfig(devices=6, sites=2, rate_hz=5))
    pub = MqttPublisher(fleet, parse_url(mosquitto.url), connections=0, offline_on_exit=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        with trio.fail_after(10):
            while not all(
                (st := gw.store.get(d.path)) is not None and st.fields and st.online
                for d in fleet.devices
            ):
                await trio.sleep(0.02)
        env = gw.store.get("berlin/line1/env-00000")
        assert env is not None and set(env.fields) == {"temperature", "humidity"}
        assert env.device_ts is not None
        # a gateway started now gets the retained statuses
        late = await mqtt_gateway(gateway_factory, mosquitto)
        with trio.fail_after(5):
            while presence(late, fleet) != [True] * 6:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()  # killed: sockets closed with no DISCONNECT
    with trio.fail_after(10):  # the broker publishes every device's last will
        while presence(gw, fleet) != [False] * 6:
            await trio.sleep(0.02)
    assert pub.stats.errors == 0


async def test_clean_stop_publishes_offline_and_shared_connections_deliver(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    fleet = Fleet(FleetConfig(devices=50, sites=5, rate_hz=4))
    pub = MqttPublisher(fleet, parse_url(mosquitto.url), connections=2)
    with trio.fail_after(20):
        await pub.run(duration_s=2.0)
    with trio.fail_after(5):  # said goodbye on the way out
        while presence(gw, fleet) != [False] * 50:
            await trio.sleep(0.02)
    assert all(gw.store.get(d.path).fields for d in fleet.devices)  # type: ignore[union-attr]
    assert pub.stats.by_kind["data"] >= 50 * 4 * 2 * 0.9
    assert pub.stats.errors == 0


async def test_gateway_run_simulate_serves_live_data_without_a_broker() -> None:
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--simulate",
            "500",
            "--port",
            "0",
            "--admin-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        assert proc.stderr is not None
        buf = b""
        with trio.fail_after(20):
            while not (m := re.search(rb"listening on http://127\.0\.0\.1:(\d+)/", buf)):
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, buf.decode()
                buf += chunk
        client = GatewayClient(f"ws://127.0.0.1:{int(m.group(1))}/ws", ["#"])
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(10):
                await client.wait_until(lambda mi: len(mi.topics) == 500)
                first = {t: x.seq for t, x in client.mirror.topics.items()}
                await client.wait_until(  # live: most devices report again
                    lambda mi: sum(x.seq > first[t] for t, x in mi.topics.items()) > 400
                )
            nursery.cancel_scope.cancel()
        assert all(x.online for x in client.mirror.topics.values())
    finally:
        await stop_process(proc)
    assert proc.returncode == 0


async def test_our_qos0_publish_encoding_is_understood_in_mqtt_5_too(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    fleet = Fleet(FleetConfig(devices=9, sites=3, rate_hz=5))
    pub = MqttPublisher(
        fleet, parse_url(mosquitto.url), connections=1, protocol="5", offline_on_exit=False
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        with trio.fail_after(10):
            while not all(
                (st := gw.store.get(d.path)) is not None and st.fields for d in fleet.devices
            ):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    machine = gw.store.get("paris/line1/machine-00001")
    assert machine is not None and set(machine.fields) == {
        "status",
        "power",
        "current",
        "vibration",
        "count",
    }
    assert gw.mqtt is not None and not gw.mqtt.stats.rejected


async def test_timestamps_start_when_publishing_does_not_when_the_fleet_was_built(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    import time

    gw = await mqtt_gateway(gateway_factory, mosquitto)
    fleet = Fleet(FleetConfig(devices=20, sites=2, rate_hz=5), start_wall=time.time())
    # deliberate: a slow start (connecting thousands of devices takes this long) must
    # not show in the timestamps
    await trio.sleep(1.0)
    pub = MqttPublisher(fleet, parse_url(mosquitto.url), connections=1, offline_on_exit=False)

    def received() -> list[float]:
        return [
            st.changed_at - st.device_ts
            for d in fleet.devices
            if (st := gw.store.get(d.path)) is not None and st.device_ts is not None
        ]

    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        with trio.fail_after(10):  # every device published once
            while len(received()) < 20:
                await trio.sleep(0.02)
        ages = received()
        nursery.cancel_scope.cancel()
    assert len(ages) == 20
    # device timestamp to gateway receipt: loopback time, not the second of setup
    assert max(ages) < 0.3, max(ages)


async def test_shared_connection_wills_do_not_become_devices(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    fleet = Fleet(FleetConfig(devices=8, sites=2, rate_hz=5))
    pub = MqttPublisher(fleet, parse_url(mosquitto.url), connections=2, offline_on_exit=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(pub.run)
        with trio.fail_after(10):
            while len(gw.store) < 8:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()  # killed: the broker publishes both connections' wills
    sub = require_binary("mosquitto_sub", "mosquitto-clients")
    with trio.fail_after(20):  # the wills are retained: they are there once published
        wills = await trio.run_process(
            [sub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", "#", "-v", "-C", "10"],
            capture_stdout=True,
        )
    seen = wills.stdout.decode().splitlines()
    assert "devices-sim/sim-c0/connection offline" in seen
    assert "devices-sim/sim-c1/connection offline" in seen
    # the broker dispatched the wills before this marker: once the marker is in, so
    # would the wills be, had the gateway been subscribed to them
    await mosquitto.publish("telemetry/marker", b'{"n": 1}')
    with trio.fail_after(10):
        while "marker" not in gw.store:
            await trio.sleep(0.02)
    assert sorted(gw.store.topics()) == sorted([*(d.path for d in fleet.devices), "marker"])


async def test_a_broker_that_drops_each_connection_at_once_gets_backed_off_attempts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that came up and was lost at once (an ACL, a duplicate client id)
    grows the backoff; only one that stayed up STABLE_S starts it afresh. The attempt
    count was reset by every successful connect, so such a broker got every connection
    of the fleet back about once a second. (Base, cap and STABLE_S are scaled down.)"""
    monkeypatch.setattr(devices_sim.mqtt, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(devices_sim.mqtt, "STABLE_S", 0.5)
    plan: list[float | None] = [0.02, 0.02, 0.02, 1.5, 0.02, 0.02]  # each held this long
    done = trio.Event()
    broker = planned_broker(plan, done)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    fleet = Fleet(FleetConfig(devices=2, sites=1, rate_hz=1))
    pub = MqttPublisher(fleet, parse_url(f"mqtt://127.0.0.1:{port}"), connections=1)
    caplog.set_level(logging.DEBUG, logger="devices_sim.mqtt")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, broker, listeners)
        nursery.start_soon(pub.run)
        with trio.fail_after(20):
            await done.wait()
        nursery.cancel_scope.cancel()
    counts = [
        int(r.getMessage().rsplit("attempt ", 1)[1].rstrip(")"))
        for r in caplog.records
        if "reconnecting in" in r.getMessage()
    ]
    # three lost at once: 1, 2, 3; held past STABLE_S: afresh (1); then 2, 3
    assert counts[: len(plan)] == [1, 2, 3, 1, 2, 3], counts
