"""Plain HTTP on the public and admin ports."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.app import Gateway
from gateway.serve.static import ALLOWED

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
    (root / "js").mkdir(parents=True)
    (root / "node_modules" / "uplot" / "dist").mkdir(parents=True)
    (root / "node_modules" / "other").mkdir(parents=True)
    (root / "index.html").write_text("<h1>wall</h1>")
    (root / "style.css").write_text("h1 {}")
    (root / "js" / "app.js").write_text("export {}")
    (root / "node_modules" / "uplot" / "dist" / "uPlot.esm.js").write_text("export {}")
    (root / "node_modules" / "uplot" / "package.json").write_text("{}")
    (root / "node_modules" / "other" / "x.js").write_text("no")
    (root / "app.js").write_text("no: scripts live in js/")
    (root / "README.md").write_text("no")
    (root / "package.json").write_text("{}")
    (root / ".secret").write_text("no")
    (tmp_path / "outside.txt").write_text("no")
    (root / "js" / "link.js").symlink_to(tmp_path / "outside.txt")
    gw: Gateway = await gateway_factory(server={"dashboard_dir": str(root)})
    status, headers, body = await http_get(gw.port, "/")
    assert (status, body) == (200, b"<h1>wall</h1>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    for path in ("/js/app.js", "/node_modules/uplot/dist/uPlot.esm.js"):
        status, headers, _ = await http_get(gw.port, path)
        assert status == 200 and headers["content-type"].startswith("text/javascript"), path
    assert (await http_get(gw.port, "/style.css"))[0] == 200
    for path in (
        "/../outside.txt", "/%2e%2e/outside.txt", "/.secret", "/js/link.js", "/nope",
        "/README.md", "/package.json", "/app.js", "/node_modules/other/x.js",
        "/node_modules/uplot/package.json", "/js/../README.md", "/js/", "/js",
    ):  # fmt: skip
        assert (await http_get(gw.port, path))[0] == 404, path
    assert (await http_get(gw.port, "/", method="POST"))[0] == 405
    status, _, body = await http_get(gw.port, "/", method="HEAD")
    assert status == 200 and body == b""


async def test_frame_ancestors_is_configurable(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("<h1>wall</h1>")
    gw: Gateway = await gateway_factory(
        server={"dashboard_dir": str(tmp_path), "frame_ancestors": "'self' https://portal.example"}
    )
    status, headers, _ = await http_get(gw.port, "/")
    assert status == 200
    assert "frame-ancestors 'self' https://portal.example" in headers["content-security-policy"]
    assert "x-frame-options" not in headers


def test_the_real_dashboard_has_no_inline_script_and_every_module_is_allowed() -> None:
    root = Path(__file__).resolve().parents[2] / "dashboard"
    html = (root / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html, re.I):
        assert "src=" in tag, tag  # no inline script: the CSP would block it
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html, re.I)  # no script body
    assert not re.search(r"\son[a-z]+=", html, re.I)  # no inline event handlers
    for js in (root / "js").glob("*.js"):
        assert ALLOWED.fullmatch(f"js/{js.name}"), js.name
    for css in root.glob("*.css"):
        assert ALLOWED.fullmatch(css.name), css.name
    for ref in re.findall(r'(?:src|href)="([^":]+)"', html):
        assert ALLOWED.fullmatch(ref), ref


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
