"""Walls in a real Chromium report to the gateway's registry (docs/operations.md,
"Walls"): two named walls listed with transport and position, a closed page gone at
once, a reload action carried out and acknowledged by a wall that comes back with its
name, and a wall behind a proxy that swallows its heartbeats reconnecting and saying
why."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import trio

from gateway.app import Gateway
from tests.browser.tcpproxy import TcpProxy
from tests.browser.test_dashboard import browser_page, in_browser

GONE_WITHIN_S = 5.0  # docs/operations.md: a closed page is gone when its connection ends


def registry(gw: Gateway) -> dict[str, dict[str, Any]]:
    """/api/walls on the admin port, by wall name (blocking: for the browser thread)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/api/walls", timeout=5) as r:
        return {w["name"]: w for w in json.loads(r.read())["walls"]}


def wait_for(check: Callable[[], Any], timeout: float = 20.0, show: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}; {show and show()}")
        time.sleep(0.1)


def post_action(gw: Gateway, query: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{gw.admin_port}/api/walls/action?{query}", method="POST", data=b""
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 202
        answer: dict[str, Any] = json.loads(r.read())
        return answer


async def test_two_walls_are_listed_one_closed_is_gone_the_other_reloads_on_request(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(simulator={"devices": 20, "rate_hz": 2})

    def visit() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with browser_page(chromium, 1280, 720) as first:
            second = first.context.browser.new_page(viewport={"width": 1280, "height": 720})
            errors: list[str] = []
            second.on("pageerror", lambda e: errors.append(str(e)))
            first.goto(f"http://127.0.0.1:{gw.port}/?wall=hall-1&transport=ws")
            second.goto(f"http://127.0.0.1:{gw.port}/?wall=lobby&transport=sse")

            def both_with_positions() -> dict[str, dict[str, Any]] | None:
                walls = registry(gw)
                ok = all(
                    walls.get(n, {}).get("seq") and walls[n].get("fps") is not None
                    for n in ("hall-1", "lobby")
                )
                return walls if ok else None

            out["listed"] = wait_for(both_with_positions)
            out["epoch"] = gw.store.epoch
            # the first page closes: its wall is gone at once
            first.close()
            closed_at = time.monotonic()
            wait_for(lambda: registry(gw)["hall-1"]["state"] == "gone")
            out["gone_after_s"] = time.monotonic() - closed_at
            # a reload from the admin side: acknowledged, and back with the same name
            # (from the admin port's /walls page, as an operator would)
            second.evaluate("() => { window.beforeReload = true; }")
            admin = first.context.browser.new_page()
            admin.on("pageerror", lambda e: errors.append(str(e)))
            admin.goto(f"http://127.0.0.1:{gw.admin_port}/walls")
            admin.wait_for_selector('tr[data-wall="hall-1"][data-state="gone"]', timeout=10_000)
            out["rows"] = admin.eval_on_selector_all(
                "#walls tr", "rows => rows.map((r) => [r.dataset.wall, r.dataset.state])"
            )
            admin.click('tr[data-wall="lobby"] button[data-action="reload"]')
            admin.wait_for_function(
                "() => document.getElementById('result').textContent.includes('reload sent')"
            )
            sent = {"id": registry(gw)["lobby"]["actions"][-1]["id"]}
            out["sent"] = sent
            second.wait_for_function(
                "() => window.beforeReload === undefined && window.wall?.reporter?.sent > 0",
                timeout=20_000,
            )

            def back() -> dict[str, Any] | None:
                lobby = registry(gw)["lobby"]
                return lobby if lobby.get("reloaded_by") == sent["id"] else None

            out["after"] = wait_for(back)
            out["errors"] = errors + first.errors
        return out

    got = await in_browser(visit)
    listed = got["listed"]
    assert listed["hall-1"]["transport"] == "ws" and listed["lobby"]["transport"] == "sse"
    for name in ("hall-1", "lobby"):
        wall = listed[name]
        assert wall["state"] == "healthy", wall
        assert wall["epoch"] == got["epoch"] and wall["topic"] and wall["seq"] >= 1
        assert wall["page"] == "All devices" and wall["visible"] is True
        assert wall["fps"] is not None and wall["behind_s"] < 5
    assert got["gone_after_s"] < GONE_WITHIN_S
    assert got["rows"] == [["hall-1", "gone"], ["lobby", "healthy"]]  # the worst first
    after = got["after"]
    action = next(a for a in after["actions"] if a["id"] == got["sent"]["id"])
    assert action["action"] == "reload" and action["status"] == "done"
    assert action["detail"] == "reloading"
    assert after["state"] == "healthy" and after["connected"] and after["transport"] == "sse"
    assert after["connects"] >= 2  # a new page took the name over
    assert got["errors"] == []


class PongSwallower(TcpProxy):
    """A TCP proxy to the gateway that forwards everything, except that on the first
    WebSocket it carries it drops every ``pong`` frame from the gateway: the socket
    stays open, the wall's heartbeats never come back."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.upgrades = 0
        self.swallowed = 0

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, server)
            await self._downstream(server, client)
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with trio.move_on_after(120):
            while data := await src.receive_some(65536):
                await dst.send_all(data)

    async def _downstream(self, server: trio.SocketStream, client: trio.SocketStream) -> None:
        buf = b""
        swallow = False
        framing = False
        with trio.move_on_after(120):
            while data := await server.receive_some(65536):
                if not framing:
                    if b"HTTP/1.1 101" not in data:
                        await client.send_all(data)
                        continue
                    head, _, buf = data.partition(b"\r\n\r\n")
                    await client.send_all(head + b"\r\n\r\n")
                    self.upgrades += 1
                    swallow = self.upgrades == 1
                    framing = True
                else:
                    buf += data
                buf = await self._frames(buf, client, swallow)

    async def _frames(self, buf: bytes, client: trio.SocketStream, swallow: bool) -> bytes:
        """Forward whole frames (the gateway's are unmasked); drop pongs if asked."""
        while len(buf) >= 2:
            size, start = buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    break
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    break
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                break
            frame, buf = buf[: start + size], buf[start + size :]
            if swallow and frame[start:].startswith(b'{"type":"pong"'):
                self.swallowed += 1
                continue
            await client.send_all(frame)
        return buf


async def test_a_wall_behind_a_proxy_that_swallows_its_heartbeats_reconnects_and_says_why(
    gateway_factory: Callable[..., Any], chromium: str, nursery: trio.Nursery
) -> None:
    gw: Gateway = await gateway_factory(server={"heartbeat_s": 1.0})
    gw.store.apply("plant/a", {"v": 1}, gw.clock.wall())
    proxy = PongSwallower(gw.port)
    port = await nursery.start(proxy.serve)

    def visit() -> dict[str, Any]:
        with browser_page(chromium, 1280, 720) as page:
            page.goto(f"http://127.0.0.1:{port}/?wall=corridor&transport=ws")

            def reported() -> dict[str, Any] | None:
                wall = registry(gw).get("corridor")
                ok = wall and wall["reconnects"] >= 1 and wall["trouble"]
                return wall if ok else None

            wall = wait_for(reported, 30)
            return {"wall": wall, "errors": page.errors}

    got = await in_browser(visit)
    wall = got["wall"]
    assert "not even the answer to a ping" in wall["trouble"], wall
    assert wall["connected"] and wall["transport"] == "ws"
    assert proxy.swallowed >= 1 and proxy.upgrades >= 2
    assert got["errors"] == []


async def test_banner_and_page_actions_and_a_slow_wall_that_reloads_itself_when_quiet(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(walls={"report_s": 3.0, "min_report_s": 1.0})
    gw.store.apply("plant/a", {"v": 1}, gw.clock.wall())

    def act(action: str, **params: str) -> str:
        query = urllib.parse.urlencode({"wall": "kiosk", "action": action, **params})
        return str(post_action(gw, query)["id"])

    def visit() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with browser_page(chromium, 1280, 720) as page:
            page.goto(f"http://127.0.0.1:{gw.port}/?wall=kiosk&selfreload=1")
            wait_for(lambda: "kiosk" in registry(gw))
            banner = act("banner", text="Fire drill", ttl_s="0")
            page.wait_for_selector("#wall-message:has-text('Fire drill')", timeout=10_000)
            # the message takes a row of its own: the wall (main) ends above it (fixed
            # over the bottom of the page, it hid the bottom row's devices)
            out["under_message"] = page.evaluate(
                """() => {
                  const top = document.getElementById('wall-message').getBoundingClientRect().top;
                  const wall = document.querySelector('main').getBoundingClientRect();
                  return [wall.height, wall.bottom - top];
                }"""
            )
            bad_page = act("page", page="No such page")
            good_page = act("page", page="0")

            def answered() -> dict[str, Any] | None:
                actions = {a["id"]: a for a in registry(gw)["kiosk"]["actions"]}
                ids = (banner, bad_page, good_page)
                done = all(actions.get(i, {}).get("acked_at") for i in ids)
                return {i: actions[i] for i in ids} if done else None

            out["actions"] = wait_for(answered)
            out["ids"] = (banner, bad_page, good_page)
            # a frame of 1.5 s (a long task): reported, and the wall reloads itself
            page.evaluate(  # in a task of the page's own, as a slow draw would be
                "() => { window.beforeReload = true; setTimeout(() => {"
                " const t = performance.now(); while (performance.now() - t < 1500) {} }, 0); }"
            )

            def reloaded() -> dict[str, Any] | None:
                wall = registry(gw)["kiosk"]
                return wall if wall.get("reloaded_by") == "self" else None

            out["after"] = wait_for(reloaded, 30, lambda: registry(gw))
            out["fresh_page"] = page.evaluate("() => window.beforeReload === undefined")
            out["errors"] = page.errors
        return out

    got = await in_browser(visit)
    banner, bad_page, good_page = (got["actions"][i] for i in got["ids"])
    assert (banner["status"], banner["detail"]) == ("done", "shown")
    assert (bad_page["status"], bad_page["detail"]) == ("failed", "no page No such page")
    assert (good_page["status"], good_page["detail"]) == ("done", "showing 0")
    assert got["fresh_page"] and got["after"]["connected"]
    height, under = got["under_message"]  # the wall's height; how far it reaches under
    assert height > 300 and under <= 0.5, got["under_message"]
    assert got["errors"] == []


class SseBuffering(PongSwallower):
    """A proxy that buffers event streams, as a misconfigured reverse proxy does: the
    stream's first bytes pass (welcome, ack, state), then nothing from its first
    heartbeat on. Everything else (the page, its POSTs) passes untouched."""

    held = 0

    async def _downstream(self, server: trio.SocketStream, client: trio.SocketStream) -> None:
        holding = streaming = False
        with trio.move_on_after(120):
            while data := await server.receive_some(65536):
                streaming = streaming or b"text/event-stream" in data
                if holding:
                    self.held += len(data)
                    continue
                if streaming and b'"type":"pong"' in data:
                    data, _, rest = data.partition(b'data: {"type":"pong"')
                    holding = True
                    self.held += len(rest) + 1
                await client.send_all(data)


async def test_a_wall_whose_event_stream_is_buffered_by_a_proxy_says_so(
    gateway_factory: Callable[..., Any], chromium: str, nursery: trio.Nursery
) -> None:
    gw: Gateway = await gateway_factory(server={"heartbeat_s": 1.0})
    gw.store.apply("plant/a", {"v": 1}, gw.clock.wall())
    proxy = SseBuffering(gw.port)
    port = await nursery.start(proxy.serve)

    def visit() -> dict[str, Any]:
        with browser_page(chromium, 1280, 720) as page:
            page.goto(f"http://127.0.0.1:{port}/?wall=annex&transport=sse")

            def reported() -> dict[str, Any] | None:
                wall = registry(gw).get("annex")
                return wall if wall and wall["trouble"] else None

            return {"wall": wait_for(reported, 30, lambda: registry(gw)), "errors": page.errors}

    got = await in_browser(visit)
    wall = got["wall"]
    assert "event stream: no heartbeat for two intervals" in wall["trouble"], wall
    assert wall["transport"] == "sse" and wall["connected"]
    assert proxy.held > 0
    assert got["errors"] == []
