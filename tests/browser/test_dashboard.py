"""The big screen in a real Chromium (Debian's, through Playwright; never downloaded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import trio

from bench.report import CHROMIUM_ARGS
from gateway.app import Gateway, serve
from tests.broker import free_port
from tests.browser.tcpproxy import TcpProxy
from tests.gw import make_config
from tests.serve.httpget import http_get


@contextmanager
def browser_page(chromium: str, width: int = 1920, height: int = 1080) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def page_state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "() => Object.fromEntries([...window.gatewayClient?.topics].map(([t, v]) =>"
        " [t, {seq: v.seq, fields: v.fields}]))"
    )


async def in_browser(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


async def test_live_values_within_two_seconds_then_offline_and_stale_shown(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(
        simulator={"devices": 200, "rate_hz": 2},
        state={"stale_after": [{"filter": "lab/#", "after_s": 1.0}]},
    )
    device = "berlin/line1/env-00000"

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{gw.port}/")
            # live values within 2 s of opening
            page.wait_for_function("() => window.wall?.tilesWithValues() >= 200", timeout=2000)
            page.wait_for_function(  # the KPIs are counted once a second
                "() => Number(document.querySelector('[data-kpi=\"online\"] span')"
                ".textContent) >= 200",
                timeout=3000,
            )
            online = page.inner_text('[data-kpi="online"] span')
            # a probe that reports once while the page watches, then goes silent
            probe = ("lab/bench/probe-1", {"temperature": 20.0})
            trio.from_thread.run_sync(lambda: gw.store.apply(*probe, gw.clock.wall()))
            trio.from_thread.run_sync(lambda: gw.store.set_presence(device, False, gw.clock.wall()))
            page.wait_for_function(
                f"() => window.wall?.tile('{device}')?.state === 'offline'", timeout=5000
            )
            page.wait_for_function(
                "() => window.wall?.tile('lab/bench/probe-1')?.state === 'stale'", timeout=5000
            )
            page.wait_for_function(  # transitions are written after a second, grouped
                "() => document.querySelector('.events ol').textContent.includes('is stale')",
                timeout=3000,
            )
            events = page.inner_text(".events ol")
            conn = page.get_attribute("#conn", "data-status")
            return {"online": online, "events": events, "conn": conn, "errors": page.errors}

    got = await in_browser(visit)
    assert int(got["online"]) >= 200
    assert f"{device} is offline" in got["events"]
    assert "lab/bench/probe-1 is stale" in got["events"]
    assert got["conn"] == "open"
    assert got["errors"] == []


async def test_the_page_survives_a_gateway_restart_and_matches_its_snapshot(
    chromium: str,
) -> None:
    port = free_port()
    cfg = make_config(
        server={"port": port, "shutdown_timeout_s": 1.0}, simulator={"devices": 100, "rate_hz": 2}
    )
    restarted = trio.Event()
    results: dict[str, Any] = {}

    def visit() -> None:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => window.gatewayClient?.topics.size >= 100", timeout=5000)
            epoch = page.evaluate("() => window.gatewayClient?.epoch")
            # every status the header shows, kept: between refused attempts it says
            # "disconnected", during each (a millisecond on a closed port) "connecting"
            page.evaluate(
                """() => { const conn = document.querySelector('#conn');
                  window.shown = [conn.dataset.status];
                  new MutationObserver(() => window.shown.push(conn.dataset.status))
                    .observe(conn, { attributes: true, attributeFilter: ['data-status'] }); }"""
            )
            trio.from_thread.run_sync(first_scope.cancel)  # the gateway goes away
            page.wait_for_function("() => window.shown.includes('disconnected')", timeout=5000)
            results["disconnected_shown"] = True
            trio.from_thread.run_sync(restarted.set)
            page.wait_for_function(
                f"() => window.gatewayClient?.epoch && window.gatewayClient?.epoch !== '{epoch}'"
                " && window.gatewayClient?.status === 'open'",
                timeout=20000,
            )
            results["reloads"] = page.evaluate(
                "() => performance.getEntriesByType('navigation').length"
            )
            results["transport"] = page.evaluate("() => window.gatewayClient?.transport")
            # compare with the new gateway's snapshot (the fleet keeps publishing: retry)
            for _ in range(50):
                snap = trio.from_thread.run(snapshot)
                mine = page_state(page)
                if all(mine.get(t, {}).get("seq", -1) >= v["seq"] for t, v in snap.items()) and set(
                    mine
                ) == set(snap):
                    results["matched"] = all(
                        mine[t]["fields"] == v["fields"]
                        for t, v in snap.items()
                        if mine[t]["seq"] == v["seq"]
                    )
                    break
                page.wait_for_timeout(100)
            results["errors"] = page.errors

    async def snapshot() -> dict[str, Any]:
        _, _, body = await http_get(port, "/api/snapshot")
        return dict(orjson.loads(body)["topics"])

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as first_scope:  # cancelled: like a kill, no close frames
            async with trio.open_nursery() as first:
                await first.start(serve, cfg)
                nursery.start_soon(in_browser, visit)
                await trio.sleep_forever()  # until the browser side cancels us
        await restarted.wait()
        second: Gateway = await nursery.start(serve, cfg)
        with trio.fail_after(60):
            while "errors" not in results:
                await trio.sleep(0.1)
        second.server.request_shutdown()
    assert results["disconnected_shown"]
    assert results.get("matched") is True
    assert results["reloads"] == 1  # reconnected by itself, no reload
    assert results["transport"] == "ws"  # a restart is no reason to fall back to events
    assert results["errors"] == []


async def test_the_page_falls_back_to_server_sent_events_and_returns_to_websocket(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(simulator={"devices": 50, "rate_hz": 2})
    # a network that refuses the upgrade: every WebSocket is closed unopened (a TCP proxy,
    # since the wall's connection runs in a worker, where page.route_web_socket does not)
    proxy = UpgradeRefuser(gw.port)

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as page:
            page.goto(f"http://127.0.0.1:{proxy.port}/")
            page.wait_for_function(
                "() => window.gatewayClient?.transport === 'sse'"
                " && window.gatewayClient?.status === 'open'"
                " && window.wall?.tilesWithValues() >= 50",
                timeout=10000,
            )
            conn = page.inner_text("#conn-text")
            for _ in range(50):  # the fleet keeps publishing: compare until in step
                snap = trio.from_thread.run(snapshot)
                mine = page_state(page)
                same = (
                    set(mine) == set(snap)
                    and all(
                        mine[t]["fields"] == v["fields"]
                        for t, v in snap.items()
                        if mine[t]["seq"] == v["seq"]
                    )
                    and all(mine[t]["seq"] >= v["seq"] for t, v in snap.items())
                )
                if same:
                    break
                page.wait_for_timeout(100)
            # the network lets WebSocket through again: the wall returns to it by itself
            proxy.refuse = False
            page.wait_for_function(
                "() => window.gatewayClient?.transport === 'ws'"
                " && window.gatewayClient?.status === 'open'",
                timeout=15_000,
            )
            back = page.inner_text("#conn-text")
            return {
                "back": back,
                "returns": page.evaluate("() => window.gatewayClient?.stats.wsReturns"),
                "mode": page.evaluate("() => window.gatewayClient?.mode"),
                "conn": conn,
                "same": same,
                "errors": page.errors,
                "closes": page.evaluate("() => window.gatewayClient?.stats.closes"),
            }

    async def snapshot() -> dict[str, Any]:
        _, _, body = await http_get(gw.port, "/api/snapshot")
        return dict(orjson.loads(body)["topics"])

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        got = await in_browser(visit)
        nursery.cancel_scope.cancel()
    assert got["same"], "the page's state never matched the gateway's"
    assert "Server-Sent Events" in got["conn"]
    assert proxy.refused >= 2
    assert got["closes"][:2] == [1006, 1006]  # two refused upgrades, then events
    assert "WebSocket" in got["back"] and got["returns"] == 1
    assert got["mode"] == "worker"  # the connection runs in the wall's worker
    assert got["errors"] == []
    assert gw.server.stats.connections_opened >= 1


class UpgradeRefuser(TcpProxy):
    """A TCP proxy to the gateway that forwards every connection, except that while
    ``refuse`` is set it closes those that ask for a WebSocket upgrade unanswered."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.refuse = True
        self.refused = 0

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            with trio.move_on_after(60):
                first = await client.receive_some(65536)
                if not first or (self.refuse and b"upgrade: websocket" in first.lower()):
                    self.refused += 1 if first else 0
                    return
                server = await trio.open_tcp_stream("127.0.0.1", self.target)
                async with server, trio.open_nursery() as nursery:
                    await server.send_all(first)
                    nursery.start_soon(self._pipe, client, server, nursery.cancel_scope)
                    await self._pipe(server, client, nursery.cancel_scope)

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()
