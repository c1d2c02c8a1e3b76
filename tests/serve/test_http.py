"""Plain HTTP on the public and admin ports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.app import Gateway

from .httpget import http_get


async def test_health_and_readiness(gateway: Gateway) -> None:
    status, _, body = await http_get(gateway.port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, _, body = await http_get(gateway.port, "/readyz")
    assert status == 200 and orjson.loads(body)["ready"] is True
    gateway.server.ready_checks["mqtt"] = lambda: (False, "broker unreachable")
    status, _, body = await http_get(gateway.admin_port, "/readyz")
    assert status == 503
    assert orjson.loads(body)["checks"]["mqtt"] == {"ok": False, "detail": "broker unreachable"}


async def test_api_topics_and_snapshot(gateway: Gateway) -> None:
    gw = gateway
    gw.store.apply("site/a/1", {"t": 1.5}, 100.0, device_ts=99.0)
    gw.store.apply("site/b/1", {"t": 2.5}, 100.0)
    status, headers, body = await http_get(gw.port, "/api/topics?filter=site/a/%2B")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = orjson.loads(body)
    assert doc["epoch"] == gw.store.epoch
    assert doc["topics"] == {
        "site/a/1": {"seq": 1, "online": None, "stale": False, "ts": 99.0, "rx": 100.0}
    }
    status, _, body = await http_get(gw.port, "/api/snapshot")
    topics = orjson.loads(body)["topics"]
    assert {t: v["fields"] for t, v in topics.items()} == {
        "site/a/1": {"t": 1.5},
        "site/b/1": {"t": 2.5},
    }
    status, _, body = await http_get(gw.port, "/api/snapshot?filter=a/%23/b")
    assert status == 400 and orjson.loads(body)["error"] == "bad_filter"


async def test_api_needs_a_token_when_auth_is_on(gateway_factory: Callable[..., Any]) -> None:
    token = "t" * 20
    gw: Gateway = await gateway_factory(
        auth={"mode": "static", "tokens": [{"name": "w", "token": token, "grants": ["a/#"]}]}
    )
    gw.store.apply("a/1", {"v": 1}, 1.0)
    gw.store.apply("b/1", {"v": 1}, 1.0)
    assert (await http_get(gw.port, "/api/topics"))[0] == 401
    assert (await http_get(gw.port, "/api/topics?access_token=wrong-token-123"))[0] == 401
    status, _, body = await http_get(
        gw.port, "/api/topics", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and list(orjson.loads(body)["topics"]) == ["a/1"]


async def test_static_files_and_traversal(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "dash"
    root.mkdir()
    (root / "index.html").write_text("<h1>wall</h1>")
    (root / "app.js").write_text("export {}")
    (root / ".secret").write_text("no")
    (tmp_path / "outside.txt").write_text("no")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    gw: Gateway = await gateway_factory(server={"dashboard_dir": str(root)})
    status, headers, body = await http_get(gw.port, "/")
    assert (status, body) == (200, b"<h1>wall</h1>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    status, headers, _ = await http_get(gw.port, "/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    for path in ("/../outside.txt", "/%2e%2e/outside.txt", "/.secret", "/link.txt", "/nope"):
        assert (await http_get(gw.port, path))[0] == 404, path
    assert (await http_get(gw.port, "/", method="POST"))[0] == 405
    status, _, body = await http_get(gw.port, "/", method="HEAD")
    assert status == 200 and body == b""


async def test_admin_port_serves_only_admin_endpoints(gateway: Gateway) -> None:
    assert (await http_get(gateway.admin_port, "/"))[0] == 404
    assert (await http_get(gateway.admin_port, "/ws"))[0] == 404


async def test_plain_get_on_ws_and_bad_upgrades(gateway: Gateway) -> None:
    assert (await http_get(gateway.port, "/ws"))[0] == 426
    status, _, _ = await http_get(
        gateway.port,
        "/ws",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "8",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert status == 426
    status, _, _ = await http_get(
        gateway.port,
        "/ws",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "short",
        },
    )
    assert status == 400
