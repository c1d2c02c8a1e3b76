"""The wall with the gateway's metadata, alarms and history, in a real Chromium, on a
user's own devices (mosquitto_pub through routes): names, values and units from
`[meta]` in the accessible text mirror, charts filled from /api/history right after
the first paint (on WebSocket and on SSE alike) and equal to it, and an alarm raised by
a rule shown on two open walls, refused for a token without the ack grant and
acknowledged from the other."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from gateway.app import Gateway
from tests.broker import Mosquitto
from tests.browser.test_dashboard import browser_page, in_browser
from tests.browser.test_wall import MIRROR, user_devices_gateway
from tests.serve.httpget import http_get

OPERATOR = "operator-token-0123456789"
VIEWER = "viewer-token-0123456789ab"
PUMP = "plant/line1/pump-3"
ALARM = f"$alarms/overpressure/{PUMP}"
SECTIONS: dict[str, Any] = {
    # a few values, then silence: without this the pump turns stale 5 s after its last
    # value (3 x its learned interval), before a busy machine has the wall open
    "state": {"stale_after": [{"filter": "plant/#", "after_s": 600.0}]},
    "auth": {
        "mode": "static",
        "tokens": [
            {"name": "operator", "token": OPERATOR, "grants": ["#"], "ack": True},
            {"name": "viewer", "token": VIEWER, "grants": ["#"]},
        ],
    },
    "meta": {
        "fields": [
            {
                "filter": "plant/#",
                "field": "pressure_bar",
                "name": "Pressure",
                "unit": "bar",
                "decimals": 1,
                "min": 0,
                "max": 10,
            },
        ],
        "names": {PUMP: "Pump 3", "yard/tank-a": "Tank A"},
    },
    "alarms": {
        "rules": [
            {
                "name": "overpressure",
                "filter": "plant/#",
                "condition": "high",
                "field": "pressure_bar",
                "threshold": 8.0,
                "severity": "critical",
                "message": "{device}: pressure {value} {unit} above {threshold} {unit}",
            },
        ]
    },
}


async def _gateway(gateway_factory: Callable[..., Any], mosquitto: Mosquitto) -> Gateway:
    return await user_devices_gateway(gateway_factory, mosquitto, **SECTIONS)


async def _api(gw: Gateway, path: str) -> Any:
    status, _, body = await http_get(gw.port, path, {"Authorization": f"Bearer {OPERATOR}"})
    assert status == 200, (path, status, body)
    return json.loads(body)


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_names_units_from_metadata_and_charts_filled_from_history_on_load(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, chromium: str, transport: str
) -> None:
    gw = await _gateway(gateway_factory, mosquitto)
    await mosquitto.publish("yard/tank-a", json.dumps({"level_m": 2.75}), retain=True)
    # a few seconds of pressure history, one value per history bucket (1 s)
    for v in (4.0, 4.5, 5.0, 5.5):
        await mosquitto.publish(PUMP, json.dumps({"pressure_bar": v}), retain=True)
        await trio.sleep(1.05)  # the next value in the next bucket: history is per second
    path = f"/api/history?topic={PUMP}&field=pressure_bar"
    with trio.fail_after(10):
        while (
            len(
                [
                    x
                    for x in (await _api(gw, path))["fields"]["pressure_bar"]["last"]
                    if x is not None
                ]
            )
            < 4
        ):
            await trio.sleep(0.1)
    served = await _api(gw, path)

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as page:
            page.goto(
                f"http://127.0.0.1:{gw.port}/?token={OPERATOR}&transport={transport}"
                "#field=pressure_bar"
            )
            page.wait_for_function(
                f"() => ({MIRROR})()['{PUMP}']?.name === 'Pump 3'", timeout=10_000
            )
            loaded_at = time.time()
            # history: the plant chart holds the past before the wall sampled it twice
            page.wait_for_function(
                "() => (window.wall.series(0, 'plant')?.avg.filter((v) => v !== null).length"
                " || 0) >= 4",
                timeout=10_000,
            )
            series = page.evaluate("() => window.wall.series(0, 'plant')")
            return {
                "mirror": page.evaluate(MIRROR),
                "series": series,
                "loaded_at": loaded_at,
                "heading": page.inner_text(".trends h2"),
                "errors": page.errors,
                "transport": page.evaluate("() => window.gatewayClient.transport"),
                # the tiles were painted before any history was asked
                "order": page.evaluate(
                    "() => [window.wall.firstPaint(), window.wall.historyAt()[0],"
                    " window.wall.history.stats.requests]"
                ),
            }

    got = await in_browser(visit)
    assert got["transport"] == transport
    first_paint, history_at, requests = got["order"]
    assert first_paint is not None and history_at is not None and first_paint < history_at
    assert requests >= 1
    pump = got["mirror"][PUMP]
    assert (pump["name"], pump["field"], pump["value"], pump["unit"]) == (
        "Pump 3",
        "pressure_bar",
        "5.5",
        "bar",
    )
    assert pump["text"] == "Pump 3: pressure_bar 5.5 bar, normal"
    assert got["mirror"]["yard/tank-a"]["name"] == "Tank A"
    assert "Pressure (bar)" in got["heading"]
    # the chart's points before load are the gateway's history, bucket by bucket
    series = got["series"]
    assert series["field"] == "pressure_bar"
    before = [i for i, t in enumerate(series["times"]) if t < got["loaded_at"] - 1]
    assert len(before) >= 4, series
    h = served["fields"]["pressure_bar"]
    by_time = {round(served["start"] + i * served["step"], 3): v for i, v in enumerate(h["last"])}
    checked = 0
    for i in before:
        v = by_time.get(round(series["times"][i], 3))
        if v is not None:
            assert abs(series["avg"][i] - v) < 1e-6, (i, series, served)
            checked += 1
    assert checked >= 4, (series, served)
    assert got["errors"] == []


ALARM_ROWS = """() => [...document.querySelectorAll('.alarms li.alarm')].map((li) => ({
  alarm: li.dataset.alarm, state: li.dataset.state, text: li.textContent,
  button: !!li.querySelector('button')}))"""


async def test_an_alarm_shows_on_two_walls_is_refused_for_a_viewer_and_acked_by_an_operator(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, chromium: str
) -> None:
    gw = await _gateway(gateway_factory, mosquitto)
    await mosquitto.publish(PUMP, json.dumps({"pressure_bar": 4.0}), retain=True)
    ready = trio.Event()
    raise_it = trio.Event()

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as op:
            # a second wall: another page of the same browser (its own connection)
            viewer = op.context.browser.new_page(viewport={"width": 1920, "height": 1080})
            viewer.errors = []
            viewer.on("pageerror", lambda e: viewer.errors.append(str(e)))
            for page, token in ((op, OPERATOR), (viewer, VIEWER)):
                page.goto(f"http://127.0.0.1:{gw.port}/?token={token}")
                page.wait_for_function(
                    f"() => ({MIRROR})()['{PUMP}']?.state === 'normal'", timeout=10_000
                )
            trio.from_thread.run_sync(ready.set)
            trio.from_thread.run(raise_it.wait)
            t0 = time.monotonic()
            seen = "(rows) => rows.some((r) => r.state === 'active_unacked')"
            for page in (op, viewer):
                page.wait_for_function(f"() => ({seen})(({ALARM_ROWS})())", timeout=10_000)
            raised_s = time.monotonic() - t0
            tile_state = op.evaluate(f"() => ({MIRROR})()['{PUMP}'].state")
            op.wait_for_function(  # the KPIs count once a second
                "() => document.querySelector('.kpi[data-kpi=critical] span').textContent !== '0'",
                timeout=10_000,
            )
            kpi = op.inner_text(".kpi[data-kpi=critical] span")
            # the viewer's token may not acknowledge: the gateway refuses, the wall says so
            viewer.click(".alarms li.alarm button")
            viewer.wait_for_selector(".alarms .refused", timeout=10_000)
            refusal = viewer.inner_text(".alarms .refused")
            # the operator acknowledges: both walls show it
            op.click(".alarms li.alarm button")
            acked = "(rows) => rows.some((r) => r.state === 'active_acked')"
            for page in (op, viewer):
                page.wait_for_function(f"() => ({acked})(({ALARM_ROWS})())", timeout=10_000)
            viewer.wait_for_function(
                "() => document.querySelector('.events ol').textContent.includes('acknowledged')",
                timeout=10_000,
            )
            return {
                "raised_s": raised_s,
                "tile_state": tile_state,
                "kpi": kpi,
                "refusal": refusal,
                "op": op.evaluate(ALARM_ROWS),
                "viewer": viewer.evaluate(ALARM_ROWS),
                "events": viewer.inner_text(".events ol"),
                "errors": op.errors + viewer.errors,
            }

    async with trio.open_nursery() as nursery:
        result: dict[str, Any] = {}

        async def run() -> None:
            result.update(await in_browser(visit))

        nursery.start_soon(run)
        await ready.wait()
        await mosquitto.publish(PUMP, json.dumps({"pressure_bar": 9.2}), retain=True)
        raise_it.set()
    print(f"alarm on both walls {result['raised_s']:.3f} s after the publish")
    assert result["raised_s"] < 3.0  # the issue asks for 1 s; a generous bound against CI noise
    assert result["tile_state"] == "alarm"
    assert result["kpi"] == "1"
    assert "not allowed" in result["refusal"]
    for rows in (result["op"], result["viewer"]):
        assert [r["alarm"] for r in rows] == [ALARM]
        assert rows[0]["state"] == "active_acked"
        assert "Pump 3: pressure 9.2 bar above 8 bar" in rows[0]["text"]
        assert "by operator" in rows[0]["text"]
        assert re.search(r"raised \d\d:\d\d:\d\d at", rows[0]["text"]), rows[0]["text"]  # 24 h
        assert not rows[0]["button"]
    assert "critical alarm raised" in result["events"]
    raised = next(x for x in result["events"].splitlines() if "alarm raised" in x)
    assert raised.count("Pump 3") == 1, raised  # the message names the device: once
    assert "AM" not in result["events"] and "PM" not in result["events"]  # a 24-hour clock
    assert "acknowledged by operator" in result["events"]
    assert result["errors"] == []
    alarms = await _api(gw, "/api/alarms")
    assert [a["state"] for a in alarms["alarms"]] == ["active_acked"]


async def test_alarms_that_do_not_fit_are_counted_in_the_title_never_cut_or_hidden(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, chromium: str
) -> None:
    """Forty active alarms on a 1920x1080 wall: the list clipped its last entries (one
    of them cut in half) and nothing said that more existed. Now only entries that fit
    whole are shown and the title counts the rest; the worst-devices table too shows
    only whole rows."""
    gw = await _gateway(gateway_factory, mosquitto)
    pumps = [f"plant/line{i % 4 + 1}/pump-{i:02d}" for i in range(40)]
    for topic in pumps:
        await mosquitto.publish(topic, json.dumps({"pressure_bar": 9.0}), retain=True)
    with trio.fail_after(20):
        while sum(a["active"] for a in (await _api(gw, "/api/alarms"))["alarms"]) < 40:
            await trio.sleep(0.2)

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{gw.port}/?token={OPERATOR}")
            page.wait_for_function(
                "() => document.querySelector('.alarms h2')?.textContent.includes('40 active')",
                timeout=15_000,
            )
            page.wait_for_timeout(1500)  # a tick of the worst table
            out: dict[str, Any] = page.evaluate(
                """() => {
                  const cutIn = (panel, sel) => {
                    const bottom = panel.getBoundingClientRect().bottom + 0.5;
                    return [...panel.querySelectorAll(sel)]
                      .filter((el) => el.getBoundingClientRect().bottom > bottom).length;
                  };
                  const alarms = document.querySelector('.alarms');
                  const worst = document.querySelector('.worst');
                  return {
                    title: alarms.querySelector('h2').textContent,
                    hidden: Number(alarms.querySelector('h2').dataset.hidden),
                    shown: alarms.querySelectorAll('li.alarm').length,
                    cut: cutIn(alarms, 'li.alarm'),
                    worstRows: worst.querySelectorAll('tr').length,
                    worstCut: cutIn(worst, 'tr'),
                  };
                }"""
            )
            out["errors"] = page.errors
            return out

    result = await in_browser(visit)
    assert result["shown"] > 0 and result["hidden"] > 0
    assert result["shown"] + result["hidden"] == 40
    assert result["cut"] == 0
    assert f"+{result['hidden']} not shown ({result['hidden']} active)" in result["title"]
    assert "40 active, 40 unacknowledged" in result["title"]
    assert result["worstRows"] > 0 and result["worstCut"] == 0
    assert result["errors"] == []
