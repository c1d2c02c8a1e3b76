"""MQTT ingest against a real mosquitto (Debian's), started on an ephemeral port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.client import GatewayClient
from tests.broker import Mosquitto
from tests.gw import url
from tests.serve.httpget import http_get

FAST = {"keepalive_s": 2.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "stable_s": 5.0}


async def mqtt_gateway(factory: Callable[..., Any], broker: Mosquitto, **mqtt: Any) -> Gateway:
    gw: Gateway = await factory(mqtt={"url": broker.url, **FAST, **mqtt})
    await until_subscribed(gw)
    return gw


async def until_subscribed(gw: Gateway) -> None:
    """Until the broker acknowledged the gateway's subscriptions (SUBACK): a publish
    before it may be missed."""
    with trio.fail_after(10):
        while not (gw.mqtt and gw.mqtt.connected and gw.mqtt._session_obj):
            await trio.sleep(0.01)
        await gw.mqtt._session_obj.subscribed.wait()


def paho_publish(port: int, msgs: list[tuple[str, bytes, bool]]) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-pub")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload, retain in msgs:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        close_paho(client)


def close_paho(client: paho.Client) -> None:
    """disconnect() then loop_stop() can stop paho's thread before it closes its
    socket; close whatever is left, so no test leaks one."""
    client.disconnect()
    client.loop_stop()
    sock = client.socket()
    if sock is not None:
        sock.close()


async def test_messages_reach_websocket_subscribers_with_fields_ts_and_presence(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    client = GatewayClient(url(gw), ["berlin/#"])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await mosquitto.publish("status/berlin/l1/p7", "online", retain=True, qos=1)
        await mosquitto.publish(
            "telemetry/berlin/l1/p7", orjson.dumps({"t": 21.5, "rpm": 1180, "ts": 1764100000.25})
        )
        await trio.to_thread.run_sync(
            paho_publish,
            mosquitto.port,
            [
                ("telemetry/berlin/l1/p8", b"42.5", False),
                ("telemetry/berlin/l1/p7", orjson.dumps({"rpm": 1200, "ts": 1764100001000}), False),
            ],
        )
        with trio.fail_after(10):
            await client.wait_until(
                lambda m: (
                    "berlin/l1/p8" in m.topics
                    and "berlin/l1/p7" in m.topics
                    and m.topics["berlin/l1/p7"].fields.get("rpm") == 1200
                )
            )
        p7, p8 = client.mirror.topics["berlin/l1/p7"], client.mirror.topics["berlin/l1/p8"]
        assert p7.fields == {"t": 21.5, "rpm": 1200}
        assert p7.ts == 1764100001.0  # milliseconds recognised
        assert p7.online is True and p7.stale is False
        assert p8.fields == {"value": 42.5} and p8.online is None
        await mosquitto.publish("status/berlin/l1/p7", "offline", retain=True, qos=1)
        with trio.fail_after(10):
            await client.wait_until(lambda m: m.topics["berlin/l1/p7"].online is False)
        nursery.cancel_scope.cancel()
    assert gw.mqtt is not None and gw.mqtt.stats.messages["mqtt"] == 5


async def test_bad_payloads_are_counted_and_skipped_while_good_ones_flow(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    # subscribed more widely than the routes reach, so that 'unmapped' can happen
    subs = [{"filter": f, "qos": 0} for f in ("telemetry/#", "status/#", "elsewhere/#")]
    gw = await mqtt_gateway(gateway_factory, mosquitto, max_payload_bytes=1000, subscriptions=subs)
    bad = [
        ("telemetry/d/1", b"{broken", "bad_json"),
        ("telemetry/d/1", b"\xff\xfe\xfd", "not_utf8"),
        ("telemetry/d/1", b"x" * 2000, "too_large"),
        ("telemetry/d/1", b"[1,2,3]", "unsupported_json"),
        ("telemetry/d/1", b'{"v": 1, "ts": "noon"}', "bad_timestamp"),
        ("elsewhere/d/1", b"1", "unmapped"),
        ("status/d/1", b"perhaps", "bad_status"),
        ("telemetry/$alarms/r/d/1", b'{"state": "normal"}', "reserved_topic"),
    ]
    for n, (topic, payload, _) in enumerate(bad):
        await mosquitto.publish(topic, payload)
        await mosquitto.publish("telemetry/d/good", orjson.dumps({"n": n}))
    assert gw.mqtt is not None
    with trio.fail_after(10):
        while (st := gw.store.get("d/good")) is None or st.fields != {"n": len(bad) - 1}:
            await trio.sleep(0.02)
        while sum(gw.mqtt.stats.rejected.values()) < len(bad):
            await trio.sleep(0.02)
    assert dict(gw.mqtt.stats.rejected) == {reason: 1 for _, _, reason in bad}
    assert "d/1" not in gw.store  # nothing half-applied
    assert gw.mqtt.connected


async def test_broker_restart_keeps_screens_marks_stale_and_recovers(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    for i in range(5):
        await mosquitto.publish(f"telemetry/s/{i}", orjson.dumps({"v": i}), retain=True, qos=1)
    clients = [GatewayClient(url(gw), ["s/#"]) for _ in range(20)]
    async with trio.open_nursery() as nursery:
        for c in clients:
            await nursery.start(c.run)
        with trio.fail_after(10):
            for c in clients:
                await c.wait_until(lambda m: len(m.topics) == 5)
        connects = gw.mqtt.stats.connects  # type: ignore[union-attr]
        await mosquitto.stop()
        with trio.fail_after(10):
            for c in clients:
                await c.wait_until(lambda m: all(t.stale for t in m.topics.values()))
        status, _, body = await http_get(gw.port, "/readyz")
        assert status == 503 and orjson.loads(body)["checks"]["mqtt"]["ok"] is False
        await mosquitto.start()
        # the gateway reconnects and resubscribes by itself; the broker's retained
        # copies come again, but they repeat what the gateway holds: not the devices
        # speaking, so the topics stay stale (honest freshness) until they do
        with trio.fail_after(15):
            while gw.store.stats.retained_old < 5:
                await trio.sleep(0.02)
        assert gw.mqtt.stats.connects == connects + 1  # type: ignore[union-attr]
        assert all(st.stale for st in gw.store.states())
        assert (await http_get(gw.port, "/readyz"))[0] == 200
        for i in range(5):
            await mosquitto.publish(f"telemetry/s/{i}", orjson.dumps({"v": i}))
        await mosquitto.publish("telemetry/s/0", orjson.dumps({"v": 100}))
        with trio.fail_after(5):
            for c in clients:
                await c.wait_until(lambda m: not any(t.stale for t in m.topics.values()))
                await c.wait_until(lambda m: m.topics["s/0"].fields == {"v": 100})
        assert all(c.connects == 1 for c in clients)  # no WebSocket was dropped
        nursery.cancel_scope.cancel()


async def test_a_hung_broker_is_detected_within_one_and_a_half_keepalives(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    assert gw.mqtt is not None
    await mosquitto.publish("telemetry/h/1", b"1")
    with trio.fail_after(5):  # delivered before the broker hangs
        while gw.store.get("h/1") is None:
            await trio.sleep(0.02)
    mosquitto.pause()
    stopped = trio.current_time()
    try:
        with trio.fail_after(10):
            while gw.mqtt.connected:
                await trio.sleep(0.02)
        detected = trio.current_time() - stopped
        assert detected <= 1.5 * 2.0 + 0.6  # keepalive 2 s, watchdog period 0.5 s
        assert gw.store.get("h/1").stale  # type: ignore[union-attr]
    finally:
        mosquitto.resume()
    with trio.fail_after(15):
        while not gw.mqtt.connected:
            await trio.sleep(0.02)
    await mosquitto.publish("telemetry/h/1", b"2")
    with trio.fail_after(5):
        while gw.store.get("h/1").fields != {"value": 2}:  # type: ignore[union-attr]
            await trio.sleep(0.02)
    assert not gw.store.get("h/1").stale  # type: ignore[union-attr]


async def test_retained_values_are_in_the_first_snapshot_after_a_gateway_restart(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    first = await mqtt_gateway(gateway_factory, mosquitto)
    for i in range(10):
        await mosquitto.publish(f"telemetry/r/{i}", orjson.dumps({"v": i}), retain=True, qos=1)
    await mosquitto.publish("status/r/0", "online", retain=True, qos=1)
    first.server.request_shutdown()
    second = await mqtt_gateway(gateway_factory, mosquitto)
    with trio.fail_after(10):
        while len(second.store) < 10:
            await trio.sleep(0.02)
    from tests.serve.rawws import RawWs

    ws = await RawWs.connect(second.port)
    await ws.recv_json()
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["r/#"]})
    assert (await ws.recv_json())["type"] == "ack"
    first_state = await ws.recv_json()
    ws.close()
    items = first_state["items"] if first_state["type"] == "batch" else [first_state]
    assert all(m["type"] == "snapshot" for m in items)
    got = {m["topic"]: (m["fields"], m["online"]) for m in items}
    assert got == {f"r/{i}": ({"v": i}, True if i == 0 else None) for i in range(10)}


async def test_a_silent_device_turns_stale_then_fresh_again(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw: Gateway = await gateway_factory(
        mqtt={"url": mosquitto.url, **FAST},
        state={"stale_after": [{"filter": "quiet/#", "after_s": 1.0}]},
    )
    await until_subscribed(gw)
    client = GatewayClient(url(gw), ["#"])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await mosquitto.publish("telemetry/quiet/1", b"1")
        await mosquitto.publish("telemetry/chatty/1", b"1")
        with trio.fail_after(5):  # silent for over 1 s (+ one 0.5 s sweep): stale
            await client.wait_until(lambda m: "quiet/1" in m.topics and m.topics["quiet/1"].stale)
        assert not client.mirror.topics["chatty/1"].stale  # no rule for it
        await mosquitto.publish("telemetry/quiet/1", b"1")  # same value: still news of life
        with trio.fail_after(5):
            await client.wait_until(lambda m: not m.topics["quiet/1"].stale)
        nursery.cancel_scope.cancel()
