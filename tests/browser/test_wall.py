"""The control-room wall in a real Chromium: a user's own devices on an unconfigured wall
(read from the accessible text mirror), honesty when the gateway goes away and comes
back, and the layout of 1, 5 and 50 groups (bounding boxes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.app import Gateway, serve
from tests.broker import Mosquitto, free_port
from tests.browser.test_dashboard import browser_page, in_browser
from tests.conftest import stop_process
from tests.gw import make_config
from tests.serve.httpget import http_get

MIRROR = """() => Object.fromEntries([...document.querySelectorAll('ul.mirror li')]
  .map((li) => [li.dataset.topic, {group: li.dataset.group, name: li.dataset.name,
    field: li.dataset.field, value: li.dataset.value, unit: li.dataset.unit,
    state: li.dataset.state, fill: li.dataset.fill, text: li.textContent}]))"""

USER_DEVICES = {
    "plant/line1/pump-3": {"pressure_bar": 4.2, "flow_lpm": 118},
    "plant/line2/pump-7": {"pressure_bar": 3.9, "flow_lpm": 97},
    "plant/line2/valve-1": {"position_pct": 40},
    "yard/tank-a": {"level_m": 2.75},
}
GREY = "#3a4350"  # the unknown state's fill: a live device must never have it


async def user_devices_gateway(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, **sections: Any
) -> Gateway:
    """A gateway reading a user's own devices (plant/..., yard/...) from ``mosquitto``,
    connected to it."""
    gw: Gateway = await gateway_factory(
        mqtt={
            "url": mosquitto.url,
            "subscriptions": [{"filter": "plant/#"}, {"filter": "yard/#"}],
            "routes": [{"filter": "plant/#"}, {"filter": "yard/#"}],
            "reconnect_min_s": 0.1,
        },
        **sections,
    )
    with trio.fail_after(10):
        while not (gw.mqtt and gw.mqtt.connected):
            await trio.sleep(0.02)
    return gw


async def test_a_users_own_devices_appear_on_an_unconfigured_wall_with_names_and_values(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, chromium: str
) -> None:
    gw = await user_devices_gateway(gateway_factory, mosquitto)
    for topic, fields in USER_DEVICES.items():
        await mosquitto.publish(topic, json.dumps(fields), retain=True)

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{gw.port}/")
            page.wait_for_function(
                f"() => Object.values(({MIRROR})()).filter((r) => r.state === 'normal').length"
                f" === {len(USER_DEVICES)}",
                timeout=10_000,
            )
            first = page.evaluate(MIRROR)
            # these devices report no presence: counted apart, as gateway_devices does
            page.wait_for_function(
                "() => document.querySelector('[data-kpi=nopresence] span').textContent === "
                f"'{len(USER_DEVICES)}'",
                timeout=10_000,
            )
            kpis = page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('.kpi')].map((k) =>
                     [k.dataset.kpi, k.hidden ? null : k.querySelector('span').textContent]))"""
            )
            page.wait_for_function("() => document.querySelectorAll('#field option').length === 5")
            options = page.eval_on_selector_all("#field option", "os => os.map((o) => o.value)")
            # the viewer picks another field: remembered in the fragment, shown at once
            page.select_option("#field", "pressure_bar")
            page.wait_for_function(
                f"() => ({MIRROR})()['plant/line1/pump-3'].value === '4.20'", timeout=10_000
            )
            picked = page.evaluate(MIRROR)
            fragment = page.evaluate("() => location.hash")
            # a new value arrives
            trio.from_thread.run(
                mosquitto.publish, "plant/line1/pump-3", json.dumps({"pressure_bar": 5.5})
            )
            page.wait_for_function(
                f"() => ({MIRROR})()['plant/line1/pump-3'].value === '5.50'", timeout=10_000
            )
            # reloaded with the fragment, the choice stays
            page.reload()
            page.wait_for_function(
                f"() => ({MIRROR})()['plant/line2/pump-7']?.value === '3.90'", timeout=10_000
            )
            page.wait_for_function(
                "() => document.getElementById('legend').textContent.includes('pressure_bar')"
            )
            return {
                "first": first,
                "picked": picked,
                "options": options,
                "fragment": fragment,
                "legend": page.inner_text("#legend"),
                "kpis": kpis,
                "errors": page.errors,
            }

    got = await in_browser(visit)
    first, picked = got["first"], got["picked"]
    # they were counted online while they said nothing about it
    kpis = got["kpis"]
    assert (kpis["total"], kpis["online"], kpis["offline"]) == ("4", "0", "0"), kpis
    assert kpis["nopresence"] == "4", kpis
    assert set(first) == set(USER_DEVICES)
    assert {t: r["name"] for t, r in first.items()} == {
        "plant/line1/pump-3": "pump-3",
        "plant/line2/pump-7": "pump-7",
        "plant/line2/valve-1": "valve-1",
        "yard/tank-a": "tank-a",
    }
    assert {r["group"] for r in first.values()} == {"plant", "yard"}
    assert first["plant/line1/pump-3"]["text"] == "pump-3: flow_lpm 118, normal"
    # the most widely reported numeric field colours the wall by default
    assert first["plant/line1/pump-3"]["field"] == "flow_lpm"
    assert first["plant/line1/pump-3"]["value"] == "118"
    assert set(got["options"]) == {"state", "pressure_bar", "flow_lpm", "position_pct", "level_m"}
    for rows in (first, picked):
        for topic, row in rows.items():
            assert row["state"] == "normal", (topic, row)
            assert row["fill"] and row["fill"] != GREY, (topic, row)
    assert picked["plant/line2/pump-7"]["value"] == "3.90"
    assert picked["yard/tank-a"]["value"] == ""  # no such field: no invented value
    assert "field=pressure_bar" in got["fragment"]
    assert "pressure_bar" in got["legend"] and "offline" in got["legend"]
    assert got["errors"] == []


async def test_the_wall_tells_the_truth_when_the_gateway_goes_away_and_returns_on_websocket(
    chromium: str,
) -> None:
    port = free_port()
    cfg = make_config(
        server={"port": port, "shutdown_timeout_s": 1.0}, simulator={"devices": 60, "rate_hz": 2}
    )
    restarted = trio.Event()
    results: dict[str, Any] = {}
    grace = 2

    def visit() -> None:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{port}/?grace={grace}")
            page.wait_for_function(
                "() => window.wall?.tilesWithValues() >= 60 && window.wall?.trends()[0]"
                " && Object.values(window.wall?.trends()[0]).some((v) => v !== null)",
                timeout=10_000,
            )
            # the text mirror writes a few rows a frame, and the header follows the data
            # age once a second: both tell the live state within seconds of the tiles
            page.wait_for_function(
                f"() => Object.values(({MIRROR})()).every((r) => r.state === 'normal')",
                timeout=5000,
            )
            results["before"] = page.evaluate(MIRROR)
            page.wait_for_selector('#conn[data-level="ok"]', timeout=5000)
            results["level_live"] = page.get_attribute("#conn", "data-level")
            trio.from_thread.run_sync(first_scope.cancel)  # the gateway goes away (a kill)
            page.wait_for_selector("#banner:not([hidden])", timeout=5000)
            results["banner_early"] = page.inner_text("#banner")
            # within the grace period plus a second's tick: unknown, not the last values
            page.wait_for_function(
                f"() => Object.values(({MIRROR})()).every((r) => r.state === 'unknown'"
                " && r.value === '')",
                timeout=(grace + 3) * 1000,
            )
            page.wait_for_function(
                "() => Object.values(window.wall?.trends()[0]).every((v) => v === null)",
                timeout=3000,
            )
            results["kpi_online"] = page.inner_text('[data-kpi="online"] span')
            results["banner"] = page.inner_text("#banner")
            results["level_down"] = page.get_attribute("#conn", "data-level")
            trio.from_thread.run_sync(restarted.set)
            page.wait_for_function(
                "() => window.gatewayClient?.status === 'open'"
                " && window.gatewayClient?.transport === 'ws'"
                " && document.getElementById('banner').hidden"
                " && window.wall?.tilesWithValues() >= 60",
                timeout=30_000,
            )
            page.wait_for_function(
                f"() => Object.values(({MIRROR})()).every((r) => r.state === 'normal')",
                timeout=5000,
            )
            results["conn"] = page.inner_text("#conn-text")
            results["transport"] = page.evaluate("() => window.gatewayClient?.transport")
            results["events"] = page.inner_text(".events ol")
            results["errors"] = page.errors

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as first_scope:  # cancelled: like a kill, no close frames
            async with trio.open_nursery() as first:
                await first.start(serve, cfg)
                nursery.start_soon(in_browser, visit)
                await trio.sleep_forever()
        await restarted.wait()
        second: Gateway = await nursery.start(serve, cfg)
        with trio.fail_after(60):
            while "errors" not in results:
                await trio.sleep(0.1)
        second.server.request_shutdown()
    assert all(r["state"] == "normal" for r in results["before"].values())
    assert results["level_live"] == "ok"
    assert "Connection to the gateway lost since" in results["banner_early"]
    assert re.search(r"since \d\d:\d\d:\d\d ·", results["banner_early"])  # a 24-hour clock
    assert "last data" in results["banner"] and "unknown" in results["banner"]
    assert results["kpi_online"] == "?"
    assert results["level_down"] == "bad"
    assert results["transport"] == "ws"
    assert "WebSocket" in results["conn"] and results["conn"].startswith("live")
    # grouped: one line for the fleet, not one per device
    assert results["events"].count("60 devices appeared") == 1
    assert "is online" not in results["events"]
    assert results["errors"] == []


async def test_a_hung_gateway_is_shown_as_a_lost_connection_not_as_live(chromium: str) -> None:
    """kill -STOP of the gateway: the wall said "live" with every tile normal for as
    long as it hung (80 s in an outside check): its socket stayed open and a close
    handshake never completed. Now an unanswered ping gives the socket up: banner,
    then unknown states, within the ping wait and the grace period; back on
    WebSocket when the gateway resumes."""
    grace = 2
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "run", "--port", str(port), "--admin-port", "0",
         "--simulate", "30", "--status-interval", "0"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    results: dict[str, Any] = {}
    stopped = trio.Event()
    resumed = trio.Event()

    def visit() -> None:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{port}/?grace={grace}&transport=ws")
            page.wait_for_function("() => window.wall?.tilesWithValues() >= 30", timeout=15_000)
            page.wait_for_selector('#conn[data-level="ok"]', timeout=5000)
            trio.from_thread.run_sync(stopped.set)
            at = page.evaluate("() => performance.now()")
            page.wait_for_selector("#banner:not([hidden])", timeout=20_000)
            results["banner_after_s"] = (page.evaluate("() => performance.now()") - at) / 1000
            results["banner"] = page.inner_text("#banner")
            page.wait_for_function(
                f"() => Object.values(({MIRROR})()).every((r) => r.state === 'unknown')",
                timeout=(grace + 5) * 1000,
            )
            results["kpi_online"] = page.inner_text('[data-kpi="online"] span')
            results["status"] = page.evaluate("() => window.gatewayClient?.status")
            trio.from_thread.run_sync(resumed.set)
            page.wait_for_function(
                "() => window.gatewayClient?.status === 'open'"
                " && window.gatewayClient?.transport === 'ws'"
                " && document.getElementById('banner').hidden",
                timeout=30_000,
            )
            page.wait_for_function(
                f"() => Object.values(({MIRROR})()).every((r) => r.state === 'normal')",
                timeout=10_000,
            )
            results["errors"] = page.errors

    async def read_log() -> None:
        assert proc.stderr is not None
        while await proc.stderr.receive_some(65536):
            pass

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_log)
            with trio.fail_after(20):
                while True:
                    try:
                        status, _, _ = await http_get(port, "/healthz")
                        if status == 200:
                            break
                    except OSError:
                        pass
                    await trio.sleep(0.1)
            nursery.start_soon(in_browser, visit)
            await stopped.wait()
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                with trio.fail_after(40):
                    await resumed.wait()
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            with trio.fail_after(60):
                while "errors" not in results:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(proc)
    assert "Connection to the gateway lost since" in results["banner"], results
    assert results["banner_after_s"] < 15, results  # 5 s quiet + 5 s for the ping's answer
    assert results["kpi_online"] == "?" and results["status"] != "open"
    assert results["errors"] == []


async def test_a_broker_outage_is_named_on_the_banner(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, chromium: str
) -> None:
    """The banner read "The gateway's data source is down (mqtt: undefined)": the
    public /readyz keeps its details to the admin port (found by an outside check)."""
    gw = await user_devices_gateway(gateway_factory, mosquitto)
    for topic, fields in USER_DEVICES.items():
        await mosquitto.publish(topic, json.dumps(fields), retain=True)
    ready = trio.Event()
    results: dict[str, Any] = {}

    def visit() -> None:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{gw.port}/?grace=2")
            page.wait_for_function("() => window.wall?.tilesWithValues() >= 4", timeout=10_000)
            trio.from_thread.run_sync(ready.set)
            page.wait_for_function(
                "() => document.getElementById('banner').innerText.includes('data source')",
                timeout=20_000,
            )
            results["banner"] = page.inner_text("#banner")
            results["errors"] = page.errors

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_browser, visit)
        await ready.wait()
        await mosquitto.stop()
        with trio.fail_after(40):
            while "errors" not in results:
                await trio.sleep(0.1)
    assert "The gateway's data source is down (mqtt not ready) since" in results["banner"]
    assert "undefined" not in results["banner"]
    assert results["errors"] == []


LAYOUT_WALL = {
    "title": "Layout",
    "pages": [
        {"name": n, "filter": f"{n}/#", "panels": [{"type": "kpis"}, {"type": "grid", "level": 2}]}
        for n in ("one", "five", "fifty", "tenk")
    ]
    + [
        {
            "name": "mixed",
            "filter": "five/#",
            "panels": [
                {"type": "grid", "level": 2},
                {"type": "trend", "field": "v", "level": 2, "max": 4},
                {"type": "worst", "field": "v"},
                {"type": "events"},
            ],
        },
        # grids only, no KPI row: the grids collapsed to one line (found by an outside
        # check: the page's rows were "auto 1fr" and the body fell into the auto one)
        {"name": "gridonly", "filter": "one/#", "panels": [{"type": "grid", "level": 2}]},
    ],
}
FLEETS = {
    "one": {"g0": 12},
    "five": {"a": 3, "b": 40, "c": 400, "d": 7, "e": 1500},
    "fifty": {f"g{i:02d}": 20 + (i % 7) * 10 for i in range(50)},
    "tenk": {f"s{i:02d}": 500 for i in range(20)},
}


def _overlap(a: list[float], b: list[float]) -> bool:
    return (
        a[0] + a[2] - 0.5 > b[0]
        and b[0] + b[2] - 0.5 > a[0]
        and (a[1] + a[3] - 0.5 > b[1] and b[1] + b[3] - 0.5 > a[1])
    )


def _inside(inner: list[float], outer: list[float]) -> bool:
    return (
        inner[0] >= outer[0] - 0.5
        and inner[1] >= outer[1] - 0.5
        and inner[0] + inner[2] <= outer[0] + outer[2] + 0.5
        and inner[1] + inner[3] <= outer[1] + outer[3] + 0.5
    )


@pytest.mark.parametrize("size", [(1920, 1080), (3840, 2160)], ids=["1080p", "2160p"])
async def test_one_five_and_fifty_groups_fill_the_wall_without_overlap(
    gateway_factory: Callable[..., Any], chromium: str, tmp_path: Path, size: tuple[int, int]
) -> None:
    wall = tmp_path / "wall.json"
    wall.write_text(json.dumps(LAYOUT_WALL))
    gw: Gateway = await gateway_factory(server={"wall_file": str(wall)})
    now = gw.clock.wall()
    for fleet, groups in FLEETS.items():
        for g, n in groups.items():
            for i in range(n):
                gw.store.apply(f"{fleet}/{g}/dev-{i}", {"v": float(i % 17)}, now)
    total = {fleet: sum(groups.values()) for fleet, groups in FLEETS.items()}

    def visit() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with browser_page(chromium, *size) as page:
            page.goto(f"http://127.0.0.1:{gw.port}/")
            page.wait_for_function(
                f"() => window.gatewayClient?.topics.size >= {sum(total.values())}", timeout=10_000
            )
            out["title"] = page.inner_text("#title")
            out["pages"] = page.eval_on_selector_all(
                "#pages button", "bs => bs.map((b) => b.textContent)"
            )
            for index, fleet in enumerate(FLEETS):
                page.evaluate(f"() => window.wall?.showPage({index})")
                page.wait_for_function(
                    "() => window.wall?.boxes().reduce((a, b) => a + b.count, 0)"
                    f" === {total[fleet]}"
                    " && window.wall?.layout()[0].side > 0",
                    timeout=5000,
                )
                page.wait_for_timeout(300)  # a resize-triggered relayout settles
                out[fleet] = {
                    "boxes": page.evaluate("() => window.wall?.boxes()"),
                    "layout": page.evaluate("() => window.wall?.layout()[0]"),
                    "area": page.evaluate(
                        "() => { const r = document.querySelector('.page:not([hidden]) .blocks')"
                        ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }"
                    ),
                }
            # a burst: 1,500 devices go offline at once -> one line, not 1,500
            page.evaluate("() => window.wall?.showPage(4)")
            trio.from_thread.run_sync(
                lambda: [
                    gw.store.set_presence(f"five/e/dev-{i}", False, gw.clock.wall())
                    for i in range(1500)
                ]
            )
            page.wait_for_function(
                "() => document.querySelector('.page:not([hidden]) .events ol')"
                ".textContent.includes('1500 devices went offline')",
                timeout=5000,
            )
            out["events"] = page.inner_text(".page:not([hidden]) .events ol")
            out["mixed"] = page.evaluate("() => window.wall?.boxes()")
            page.evaluate("() => window.wall?.showPage(5)")
            page.wait_for_function("() => window.wall?.layout()[0]?.side > 0", timeout=5000)
            page.wait_for_timeout(300)
            out["gridonly"] = page.evaluate(
                "() => [document.querySelector('.page:not([hidden]) .blocks'),"
                " document.querySelector('main')].map((e) => e.getBoundingClientRect().height)"
            )
            out["errors"] = page.errors
            # kiosk rotation from the URL: the pages take turns by themselves
            page.goto(f"http://127.0.0.1:{gw.port}/?rotate=1#page=0")
            seen = set()
            for _ in range(60):
                seen.add(page.evaluate("() => window.wall?.page()"))
                if {0, 1, 2} <= seen:
                    break
                page.wait_for_timeout(100)
            out["rotated"] = sorted(p for p in seen if p is not None)
            out["errors"] += page.errors
        return out

    got = await in_browser(visit)
    assert got["title"] == "Layout"
    assert got["pages"] == ["one", "five", "fifty", "tenk", "mixed", "gridonly"]
    blocks_h, main_h = got["gridonly"]
    assert blocks_h >= 0.8 * main_h, got["gridonly"]  # the grid fills the page
    assert {0, 1, 2} <= set(got["rotated"])
    for fleet, groups in FLEETS.items():
        boxes, area = got[fleet]["boxes"], got[fleet]["area"]
        assert {b["name"]: b["count"] for b in boxes} == {
            f"{fleet}/{g}": n for g, n in groups.items()
        }
        for i, a in enumerate(boxes):
            assert _inside(a["block"], area), (fleet, a, area)
            assert _inside(a["tiles"], a["block"]), (fleet, a)  # no tile or ring spills over
            for b in boxes[i + 1 :]:
                assert not _overlap(a["block"], b["block"]), (fleet, a, b)
        # no half-empty wall: the blocks cover (nearly) the whole grid area
        covered = sum(b["block"][2] * b["block"][3] for b in boxes)
        assert covered >= 0.9 * area[2] * area[3], (fleet, covered, area)
        # a block's room follows its device count
        if fleet == "five":
            by = {b["name"]: b["block"][2] * b["block"][3] for b in boxes}
            assert by["five/e"] > 2 * by["five/c"] > 4 * by["five/a"]
    assert got["one"]["layout"]["wide"] is True  # 12 devices: text tiles
    assert got["tenk"]["layout"]["side"] >= 3  # 10,000 devices still get visible tiles
    assert got["events"].count("went offline") == 1
    assert got["errors"] == []


async def test_a_wall_with_nothing_to_show_says_why(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(simulator={"devices": 20, "rate_hz": 1})

    def visit() -> dict[str, str]:
        out = {}
        with browser_page(chromium) as page:
            for name, flt in (("empty", "nowhere/%23"), ("bad", "a/%23/b")):
                page.goto(f"http://127.0.0.1:{gw.port}/?filter={flt}")
                page.wait_for_selector("#banner:not([hidden])", timeout=10_000)
                out[name] = page.inner_text("#banner")
            out["errors"] = "; ".join(page.errors)
        return out

    got = await in_browser(visit)
    assert 'no device matches the filter "nowhere/#"' in got["empty"]
    assert "refused this wall's subscription" in got["bad"]
    assert got["errors"] == ""
