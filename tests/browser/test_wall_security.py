"""The wall under its security headers: the token from the URL fragment, kept out of
history; no CSP violation; same-origin /api requests pass the Origin rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.app import Gateway

from .test_dashboard import browser_page, in_browser

TOKEN = "wall-token-0123456789"


async def test_the_wall_takes_its_token_from_the_fragment_and_forgets_it(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(
        simulator={"devices": 20, "rate_hz": 2},
        auth={"mode": "static", "tokens": [{"name": "wall", "token": TOKEN, "grants": ["#"]}]},
    )
    base = f"http://127.0.0.1:{gw.port}/"

    def visit() -> dict[str, Any]:
        with browser_page(chromium) as page:
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(f"{base}?title=Hall#token={TOKEN}")
            page.wait_for_function("() => window.wall?.tilesWithValues() >= 20", timeout=15_000)
            # the fragment's token also opens the wall's other doors: metadata, history
            page.wait_for_function(
                "() => window.wall.meta.served && window.wall.historyAt()[0] !== null",
                timeout=10_000,
            )
            side = page.evaluate("() => window.wall.history.stats")
            api = page.evaluate(
                "async (t) => (await fetch('/api/topics', "
                "{headers: {Authorization: 'Bearer ' + t}})).status",
                TOKEN,
            )
            return {
                "url": page.url,
                "history": side,
                "api": api,
                "errors": page.errors,
                "csp": [c for c in console if "Content Security Policy" in c],
            }

    got = await in_browser(visit)
    # the token is gone from the address bar (the wall keeps its own view in the fragment)
    assert got["url"].split("#")[0] == f"{base}?title=Hall"
    assert TOKEN not in got["url"]
    assert got["api"] == 200  # Origin http://127.0.0.1:P is the wall's own
    assert got["history"]["requests"] >= 1 and got["history"]["failed"] == 0
    assert got["errors"] == [] and got["csp"] == []
