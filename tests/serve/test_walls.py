"""Walls over real sockets: reports on /ws and over /sse + POST, /api/walls and the
/walls page on the admin port, actions sent, acknowledged and audited, refusals."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from gateway.app import Gateway
from tests.gw import url
from tests.serve.httpget import http_get

from .test_sse import EventStream

OPS = {"mode": "static", "tokens": [{"name": "ops", "token": "ops-secret-0123456789"}]}
VIEWER = {"name": "viewer", "token": "viewer-secret-0123456789"}


async def http(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        await sock.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := await sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode().split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in hdr_lines)}
    return int(status_line.split()[1]), hdrs, rest


async def walls(gw: Gateway) -> list[dict[str, Any]]:
    status, _, body = await http_get(gw.admin_port, "/api/walls")
    assert status == 200
    rows: list[dict[str, Any]] = orjson.loads(body)["walls"]
    return rows


async def until(check: Callable[[], Any]) -> Any:
    with trio.fail_after(5):
        while True:
            got = await check()
            if got:
                return got
            await trio.sleep(0.01)


async def welcome(ws: WebSocketConnection) -> dict[str, Any]:
    msg: dict[str, Any] = orjson.loads(await ws.get_message())
    assert msg["type"] == "welcome"
    return msg


async def next_of(ws: WebSocketConnection, kind: str) -> dict[str, Any]:
    with trio.fail_after(5):
        while True:
            msg: dict[str, Any] = orjson.loads(await ws.get_message())
            if msg["type"] == kind:
                return msg


async def act(gw: Gateway, query: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, body = await http(gw.admin_port, "POST", f"/api/walls/action?{query}", b"", headers)
    return status, orjson.loads(body) if body else {}


async def test_a_wall_reports_is_listed_takes_an_action_and_its_ack_is_recorded(
    gateway_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    gw: Gateway = await gateway_factory()
    gw.store.apply("a/b", {"v": 1}, gw.clock.wall())
    caplog.set_level(logging.INFO, "gateway.audit")
    async with open_websocket_url(url(gw)) as ws:
        hello = await welcome(ws)
        assert hello["protocol_minor"] >= 2  # walls came with minor 2
        assert hello["limits"]["wall_report_s"] == 30.0
        assert hello["limits"]["wall_min_report_s"] == 2.0
        report = {"type": "report", "wall": "hall-1", "page": "Overview", "transport": "ws"}
        report |= {"epoch": gw.store.epoch, "topic": "a/b", "seq": 1, "fps": 60, "visible": True}
        await ws.send_message(orjson.dumps(report).decode())
        rows = await until(lambda: walls(gw))
        assert [(r["name"], r["state"], r["transport"], r["seq"]) for r in rows] == [
            ("hall-1", "healthy", "ws", 1)
        ]
        assert rows[0]["page"] == "Overview" and rows[0]["address"] == "127.0.0.1"
        # too soon: refused with an error, nothing changed
        await ws.send_message(orjson.dumps(report | {"page": "Other"}).decode())
        err = await next_of(ws, "error")
        assert err["code"] == "too_soon"
        assert (await walls(gw))[0]["page"] == "Overview"
        # an action from the admin port reaches the wall
        status, sent = await act(
            gw, "wall=hall-1&action=banner&text=Maintenance+at+14%3A00&ttl_s=60"
        )
        assert status == 202 and sent["status"] == "sent"
        action = await next_of(ws, "action")
        assert action == {
            "type": "action",
            "id": sent["id"],
            "action": "banner",
            "text": "Maintenance at 14:00",
            "ttl_s": 60.0,
        }
        assert (await walls(gw))[0]["actions"][0]["status"] == "sent"
        ack = {"type": "action_ack", "id": sent["id"], "ok": True, "detail": "shown"}
        await ws.send_message(orjson.dumps(ack).decode())

        async def acked() -> bool:
            return bool((await walls(gw))[0]["actions"][0]["status"] == "done")

        await until(acked)
    # the page closed: gone at once
    rows = await until(
        lambda: _first_state(gw, "gone"),
    )
    assert rows["name"] == "hall-1" and rows["connected"] is False
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    assert any("by anonymous: banner on wall 'hall-1'" in line for line in lines), lines
    assert any("acknowledged by wall 'hall-1': done (shown)" in line for line in lines), lines


async def _first_state(gw: Gateway, state: str) -> dict[str, Any] | None:
    rows = await walls(gw)
    return rows[0] if rows and rows[0]["state"] == state else None


async def test_bad_reports_are_protocol_errors_and_oversized_ones_are_refused(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory()
    async with open_websocket_url(url(gw)) as ws:
        await welcome(ws)
        await ws.send_message('{"type":"report","wall":"<b>x</b>"}')
        assert (await next_of(ws, "error"))["code"] == "bad_message"
        big = orjson.dumps({"type": "report", "wall": "w", "trouble": "x", "pad": "y" * 3000})
        await ws.send_message(big.decode())
        err = await next_of(ws, "error")
        assert err["code"] == "bad_message" and "2048 bytes" in err["message"]
        await ws.send_message('{"type":"action_ack","id":"a-1"}')
        assert (await next_of(ws, "error"))["code"] == "unknown_action"
        assert await walls(gw) == []
    assert gw.server.stats.inbound_rejected["bad_message"] == 2


async def test_a_wall_on_an_event_stream_reports_by_post_and_gets_actions_as_events(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory()
    stream = await EventStream.open(gw.port, "filter=%23&wall=lobby")
    assert stream.status == 200
    assert (await stream.event() or {})["type"] == "welcome"
    row = (await until(lambda: walls(gw)))[0]
    assert (row["name"], row["transport"], row["state"]) == ("lobby", "sse", "healthy")
    report = {"type": "report", "wall": "lobby", "transport": "sse", "fps": 2.0}
    status, _, _ = await http(gw.port, "POST", "/api/walls/report", orjson.dumps(report))
    assert status == 202
    row = (await walls(gw))[0]
    assert (row["state"], row["fps"]) == ("lagging", 2.0)
    # another wall name has no stream: refused
    status, _, body = await http(
        gw.port, "POST", "/api/walls/report", orjson.dumps(report | {"wall": "elsewhere"})
    )
    assert status == 409 and orjson.loads(body)["error"] == "no_stream"
    status, _, body = await http(gw.port, "POST", "/api/walls/report", b'{"type":"ping"}')
    assert status == 400
    status, sent = await act(gw, "wall=lobby&action=page&page=Hall+2")
    assert status == 202
    with trio.fail_after(5):
        while (event := await stream.event()) is not None and event["type"] != "action":
            pass
    assert event == {"type": "action", "id": sent["id"], "action": "page", "page": "Hall 2"}
    ack = {"type": "action_ack", "id": sent["id"], "ok": False, "detail": "no such page"}
    status, _, _ = await http(gw.port, "POST", "/api/walls/report", orjson.dumps(ack))
    assert status == 202
    assert (await walls(gw))[0]["actions"][0]["status"] == "failed"
    stream.sock.close()
    await until(lambda: _first_state(gw, "gone"))


async def test_actions_need_an_operator_token_and_an_allowed_origin(
    gateway_factory: Callable[..., Any],
) -> None:
    auth = {**OPS, "tokens": [*OPS["tokens"], VIEWER]}
    gw: Gateway = await gateway_factory(auth=auth, walls={"operators": ["ops"]})
    async with open_websocket_url(url(gw, "/ws?access_token=viewer-secret-0123456789")) as ws:
        await welcome(ws)
        await ws.send_message('{"type":"report","wall":"w1"}')
        await until(lambda: walls(gw))
        assert (await act(gw, "wall=w1&action=reload"))[0] == 401
        assert (await act(gw, "wall=w1&action=reload", "wrong"))[0] == 401
        status, body = await act(gw, "wall=w1&action=reload", "viewer-secret-0123456789")
        assert status == 403 and body["error"] == "forbidden"
        status, _, _ = await http(
            gw.admin_port,
            "POST",
            "/api/walls/action?wall=w1&action=reload",
            headers={
                "Authorization": "Bearer ops-secret-0123456789",
                "Origin": "https://evil.example",
            },
        )
        assert status == 403
        assert (await act(gw, "wall=nobody&action=reload", "ops-secret-0123456789"))[0] == 404
        assert (await act(gw, "wall=w1&action=explode", "ops-secret-0123456789"))[0] == 400
        assert (await act(gw, "wall=w1&action=banner&ttl_s=-1", "ops-secret-0123456789"))[0] == 400
        status, sent = await act(gw, "wall=w1&action=reload", "ops-secret-0123456789")
        assert status == 202
        assert (await next_of(ws, "action"))["id"] == sent["id"]
    assert (await act(gw, "wall=w1&action=reload", "ops-secret-0123456789"))[0] == 409  # gone
    # the public port has no registry
    assert (await http_get(gw.port, "/api/walls"))[0] in (401, 404)


async def test_the_walls_page_is_served_with_a_policy_that_forbids_inline_script(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory()
    status, headers, body = await http_get(gw.admin_port, "/walls")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert b'<script type="module" src="/walls.js">' in body
    assert b"<script>" not in body and b"style=" not in body
    status, headers, _ = await http_get(gw.admin_port, "/walls.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")


async def test_a_walls_event_stream_carries_its_heartbeat_as_an_event_others_a_comment(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"heartbeat_s": 0.2})
    wall = await EventStream.open(gw.port, "filter=nothing%2F%23&wall=lobby")
    plain = await EventStream.open(gw.port, "filter=nothing%2F%23")
    with trio.fail_after(5):
        kinds = [(await wall.event() or {}).get("type") for _ in range(3)]
    assert kinds == ["welcome", "ack", "pong"]
    with trio.fail_after(5):
        assert [(await plain.event() or {}).get("type") for _ in range(2)] == ["welcome", "ack"]
        while b": hb" not in plain.buf:  # the comment: EventSource hides it from scripts
            plain.buf += await plain.sock.recv(65536)
    assert b'"pong"' not in plain.buf
    wall.sock.close()
    plain.sock.close()
