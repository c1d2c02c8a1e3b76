"""Chart history end to end (a user's device through mosquitto_pub) and stale by
default (MockClock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio
import trio.testing

from gateway.app import Gateway
from tests.broker import Mosquitto
from tests.gw import start_gateway
from tests.ingest.test_mqtt import until_subscribed
from tests.serve.httpget import http_get
from tests.serve.rawws import RawWs

from .test_mqtt import FAST

DEVICE = "greenhouse/north/sensor-3"
VALUES = [18.5, 19.25, 17.0, 21.75, 20.5]


def by_time(doc: dict[str, Any], name: str, col: str) -> dict[float, float]:
    start, step = doc["start"], doc["step"]
    return {
        round(start + i * step, 6): v
        for i, v in enumerate(doc["fields"][name][col])
        if v is not None
    }


async def test_subscription_history_comes_first_and_equals_api_history(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw: Gateway = await gateway_factory(
        mqtt={"url": mosquitto.url, **FAST}, history={"window_s": 120, "resolution_s": 0.5}
    )
    await until_subscribed(gw)  # SUBACK before the first publish
    for v in VALUES:
        await mosquitto.publish(f"telemetry/{DEVICE}", orjson.dumps({"soil_temp": v, "ok": True}))
        with trio.fail_after(10):
            while (st := gw.store.get(DEVICE)) is None or st.fields["soil_temp"] != v:
                await trio.sleep(0.005)

    ws = await RawWs.connect(gw.port)
    try:
        assert (await ws.recv_json())["type"] == "welcome"
        await ws.send_json(
            {"type": "subscribe", "id": "chart", "filters": ["greenhouse/#"], "history_s": 60}
        )
        assert (await ws.recv_json())["op"] == "subscribe"
        hist = await ws.recv_json()
        assert hist["type"] == "history" and hist["id"] == "chart" and hist["topic"] == DEVICE
        assert list(hist["fields"]) == ["soil_temp"]  # numbers only
        end = await ws.recv_json()
        assert end == {"type": "history_end", "id": "chart", "topics": 1, "truncated": False}
        snap = await ws.recv_json()  # the live state comes after the history
        assert snap["type"] == "snapshot" and snap["fields"]["soil_temp"] == VALUES[-1]

        lasts = [v for v in hist["fields"]["soil_temp"]["last"] if v is not None]
        assert lasts[-1] == VALUES[-1] and set(lasts) <= set(VALUES)
        mins = [v for v in hist["fields"]["soil_temp"]["min"] if v is not None]
        maxs = [v for v in hist["fields"]["soil_temp"]["max"] if v is not None]
        assert (min(mins), max(maxs)) == (min(VALUES), max(VALUES))
        assert len(hist["fields"]["soil_temp"]["last"]) == 120  # 60 s at 0.5 s

        status, _, body = await http_get(
            gw.port, f"/api/history?topic={DEVICE}&field=soil_temp&seconds=60"
        )
        assert status == 200
        api = orjson.loads(body)
        for col in ("min", "max", "last"):
            a, b = by_time(hist, "soil_temp", col), by_time(api, "soil_temp", col)
            common = a.keys() & b.keys()
            assert common and all(a[t] == b[t] for t in common)
            assert sorted(a.values()) == sorted(b.values())  # no bucket lost or moved

        await mosquitto.publish(f"telemetry/{DEVICE}", b'{"soil_temp": 22.0}')
        delta = await ws.recv_json()
        assert delta["type"] == "delta" and delta["set"] == {"soil_temp": 22.0}
    finally:
        ws.close()
    status, _, _ = await http_get(gw.port, "/api/history?topic=greenhouse/none&field=x")
    assert status == 404


async def test_a_device_that_stops_reporting_is_stale_after_the_learned_multiple(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    gw = await start_gateway(nursery)  # no stale_after rule configured
    try:
        last = 0.0
        for i in range(6):  # every 5 s
            gw.store.apply("yard/pump-2", {"flow": i}, gw.clock.wall())
            last = trio.current_time()
            await trio.sleep(5)
        # silent from `last` on: stale after 3 x 5 s (docs/operations.md), not before
        await trio.sleep_until(last + 14.0)
        st = gw.store.get("yard/pump-2")
        assert st is not None and not st.stale
        await trio.sleep_until(last + 15.0 + 1.0)  # one sweep interval and a margin
        assert st.stale
        status, _, body = await http_get(gw.port, "/api/snapshot?filter=yard/%23")
        assert status == 200 and orjson.loads(body)["topics"]["yard/pump-2"]["stale"] is True
    finally:
        gw.server.request_shutdown()


async def test_a_big_history_is_capped_and_never_stalls_the_loop(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory()
    start = gw.clock.wall() - 600
    for s in range(0, 600, 2):  # 120 topics x 3 fields, a full default window each
        for i in range(120):
            gw.store.apply(f"farm/f{i}", {"a": s + i, "b": s * 0.5, "c": -s}, start + s)
        await trio.lowlevel.checkpoint()
    ws = await RawWs.connect(gw.port)
    try:
        assert (await ws.recv_json())["type"] == "welcome"
        with gw.looplag.window() as lag:
            await ws.send_json(
                {"type": "subscribe", "id": "all", "filters": ["farm/#"], "history_s": 600}
            )
            assert (await ws.recv_json())["op"] == "subscribe"
            size = 0
            while (msg := await ws.recv_json())["type"] == "history":
                size += len(orjson.dumps(msg))
            assert msg["type"] == "history_end" and msg["truncated"] is True
            assert 0 < msg["topics"] < 120 and size <= 2 << 20
            assert (await ws.recv_json())["type"] in ("snapshot", "batch")
        print(f"loop lag during the history: max {lag.max:.3f} s, p99 {lag.quantile(0.99)}")
        assert lag.max < 0.5  # one topic per checkpoint (budget: 100 ms)
    finally:
        ws.close()
