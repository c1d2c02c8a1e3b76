"""Metrics on the admin port: the exposition is valid and the numbers are right."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.client import GatewayClient
from gateway.core.state import StateStore
from gateway.metrics import CENSUS_STEP, TopicCensus
from tests.broker import Mosquitto
from tests.conftest import require_binary
from tests.gw import url
from tests.ingest.test_mqtt import until_subscribed
from tests.serve.httpget import http_get
from tests.serve.rawws import RawWs
from tests.turns import others_turns_during


async def scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = await http_get(gw.admin_port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m[(name, tuple(sorted(labels.items())))]


async def test_promtool_accepts_the_live_exposition_under_traffic(
    gateway_factory: Callable[..., Any],
) -> None:
    promtool = require_binary("promtool", "prometheus")
    gw: Gateway = await gateway_factory(simulator={"devices": 200, "rate_hz": 5})
    client = GatewayClient(url(gw), ["#"])
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(10):
            await client.wait_until(lambda m: len(m.topics) == 200)
        with trio.fail_after(10):  # traffic: sends timed, more than a round ingested
            while True:
                m = await scrape(gw)
                if (
                    value(m, "gateway_device_to_send_seconds_count") > 0
                    and value(m, "gateway_ingest_messages_total", source="simulator") > 200
                ):
                    break
                await trio.sleep(0.05)
        _, _, body = await http_get(gw.admin_port, "/metrics")
        nursery.cancel_scope.cancel()
    done = await trio.run_process(
        [promtool, "check", "metrics"],
        stdin=body,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == b"" and done.stderr.strip() == b""
    m = await scrape(gw)
    assert value(m, "gateway_device_to_send_seconds_count") > 0
    assert value(m, "gateway_ingest_messages_total", source="simulator") > 200
    assert value(m, "gateway_devices", state="online") == 200
    assert value(m, "gateway_build_info", version="0.1.0") == 1


async def test_connections_and_disconnects_are_counted_by_reason(gateway: Gateway) -> None:
    clients = [await RawWs.connect(gateway.port) for _ in range(3)]
    for c in clients:
        await c.recv_json()
    m = await scrape(gateway)
    assert value(m, "gateway_websocket_connections") == 3
    await clients[0].send_raw(clients[0].frame(b"\x03\xe8", opcode=8))  # close 1000
    assert await clients[0].close_code_at_end() == 1000
    with trio.fail_after(5):
        while (m := await scrape(gateway)) and value(m, "gateway_websocket_connections") != 2:
            await trio.sleep(0.02)
    assert value(m, "gateway_websocket_connections_opened_total") == 3
    assert value(m, "gateway_websocket_disconnects_total", reason="client_close") == 1
    assert sum(v for (n, _), v in m.items() if n == "gateway_websocket_disconnects_total") == 1
    for c in clients:
        c.close()


async def test_a_stalled_client_is_one_slow_disconnect_and_one_send_failure(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(
        server={"stall_s": 1.0, "close_timeout_s": 0.5, "tick_hz": 20, "default_rate_hz": 20}
    )
    # 200 KB per update (a changing blob: a delta carries only changed fields), so the
    # kernel buffers, autotuned to megabytes, fill within a second
    big = "x" * 200_000
    gw.store.apply("plant/line", {"blob": big}, gw.clock.wall())
    stalled = await RawWs.connect(gw.port, rcvbuf=4096)
    try:
        await stalled.recv_json()
        await stalled.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
        with trio.fail_after(20):
            n = 0
            while value(await scrape(gw), "gateway_websocket_connections") != 0:
                n += 1
                gw.store.apply("plant/line", {"blob": f"{n}{big}"}, gw.clock.wall())
                await trio.sleep(0.05)
    finally:
        stalled.close()
    m = await scrape(gw)
    assert value(m, "gateway_outbox_slow_disconnects_total", reason="stalled") == 1
    assert value(m, "gateway_websocket_send_failures_total", reason="stalled") == 1
    assert value(m, "gateway_websocket_disconnects_total", reason="slow") == 1


async def test_a_bad_mqtt_payload_is_one_rejection_with_its_reason(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw: Gateway = await gateway_factory(mqtt={"url": mosquitto.url})
    await until_subscribed(gw)  # a publish before the SUBACK may be missed
    m = await scrape(gw)
    assert value(m, "gateway_mqtt_connected") == 1
    await mosquitto.publish("telemetry/a/1", b"{oops")
    await mosquitto.publish("telemetry/a/2", b"1")
    with trio.fail_after(5):
        while "a/2" not in gw.store:
            await trio.sleep(0.02)
    m = await scrape(gw)
    assert value(m, "gateway_ingest_rejections_total", reason="bad_json") == 1
    assert sum(v for (n, _), v in m.items() if n == "gateway_ingest_rejections_total") == 1
    assert value(m, "gateway_ingest_messages_total", source="mqtt") == 2


async def test_ten_thousand_topics_add_no_series(gateway: Gateway) -> None:
    gateway.store.apply("first", {"v": 1}, 1.0)
    before = set(await scrape(gateway))
    for i in range(10_000):
        gateway.store.apply(f"site/{i % 20}/dev{i}", {"v": i, "status": "run"}, 2.0)
    after = set(await scrape(gateway))
    assert after == before


async def test_latency_is_observed_for_a_bounded_sample_of_each_tick(
    gateway_factory: Callable[..., Any],
) -> None:
    """A tick carrying a thousand topics observes at most LATENCY_SAMPLES of them
    (evenly spread): the histograms' cost per tick does not grow with the fleet."""
    from gateway.serve.fanout import LATENCY_SAMPLES

    # a slow tick, so that each carries far more topics than the sample (a light
    # fleet: 2,400 changes a second, 1,200 a tick)
    gw: Gateway = await gateway_factory(
        simulator={"devices": 1200, "rate_hz": 2}, server={"tick_hz": 2, "default_rate_hz": 2}
    )
    client = GatewayClient(url(gw), ["#"])
    count = "gateway_ingest_to_send_seconds_count"
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(30):
            await client.wait_until(lambda m: len(m.topics) == 1200)
        before, ticks0 = value(await scrape(gw), count), gw.server.stats.ticks
        changes0 = gw.store.changes
        await trio.sleep(2.0)
        after, ticks1 = value(await scrape(gw), count), gw.server.stats.ticks
        changes = gw.store.changes - changes0
        nursery.cancel_scope.cancel()
    assert changes > 2 * LATENCY_SAMPLES * (ticks1 - ticks0 + 1)  # ticks carry more than that
    assert 0 < after - before <= LATENCY_SAMPLES * (ticks1 - ticks0 + 1)


async def test_a_scrape_counts_every_topic_in_slices_between_checkpoints() -> None:
    """The census a scrape reports (devices by presence and staleness, learned
    intervals) is counted CENSUS_STEP topics at a time with a checkpoint between:
    in one go it held the loop for most of a scrape (7 of 11 ms at 10,000 topics)."""
    store = StateStore("e")
    n = 20_000
    for i in range(n):
        topic = f"site/{i % 20}/dev{i}"
        store.apply(topic, {"v": i}, 1.0)
        if i % 3 == 0:
            store.set_presence(topic, i % 2 == 0, 1.0)  # online, offline, else unknown
        if i % 7 == 0:
            store.apply(topic, {"v": -i}, 3.0)  # a second report: an interval
    store.apply("$alarms/site/0/dev0/hot", {"state": "active"}, 1.0)
    store.mark_all_stale(10.0)
    for i in range(0, n, 5):
        store.apply(f"site/{i % 20}/dev{i}", {"v": 0}, 11.0)  # fresh again
    census = TopicCensus(store)
    _, during = await others_turns_during(census.refresh)
    assert during >= n // CENSUS_STEP  # the other task ran between the slices
    devices = [st for st in store.states() if not st.topic.startswith("$")]
    assert census.devices == {
        "online": sum(st.online is True for st in devices),
        "offline": sum(st.online is False for st in devices),
        "unknown": sum(st.online is None for st in devices),
        "stale": sum(st.stale for st in devices),
    }
    assert census.devices["online"] and census.devices["offline"] and census.devices["unknown"]
    assert 0 < census.devices["stale"] < n
    assert census.learned == sum(bool(st.interval) for st in store.states()) > 0
