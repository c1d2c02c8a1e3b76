"""A wall the gateway refuses says why and what to do: a banner naming the reason in
words, for a token refused at the handshake (HTTP 401, which a browser's WebSocket sees
only as 1006) and for a token that expires while connected (close 4001, after which the
client does not reconnect); words exist for every such close code of the gateway's table."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jwt

from gateway.app import Gateway
from gateway.core.disconnect import DISCONNECTS
from tests.nodejs import run_module_script

from .test_dashboard import browser_page, in_browser

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "wall-refusal-test-secret-0123456789abcdef"
BANNER = (
    "() => { const b = document.getElementById('banner'); return b.hidden ? null : b.textContent; }"
)


def test_the_wall_has_words_for_every_close_code_that_ends_reconnecting() -> None:
    codes = list(DISCONNECTS)
    script = (
        f"import {{ refusalText }} from {json.dumps(str(ROOT / 'dashboard/js/refusal.js'))};"
        f"console.log(JSON.stringify({json.dumps(codes)}.map((code) => refusalText({{code}}))));"
    )
    texts = dict(zip(codes, run_module_script(script), strict=True))
    # a code the client retries is not a refusal: the connection banner covers it
    assert {c for c, t in texts.items() if t} == {
        c for c, d in DISCONNECTS.items() if not d.reconnect
    }
    assert texts[4001].startswith("Connection refused: token rejected")


def _token(seconds: float) -> str:
    claims = {"sub": "wall", "topics": ["#"], "exp": int(time.time() + seconds)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_a_refused_token_is_named_on_the_banner_with_what_to_do(
    gateway_factory: Callable[..., Any], chromium: str
) -> None:
    gw: Gateway = await gateway_factory(
        simulator={"devices": 20, "rate_hz": 2},
        auth={"mode": "jwt", "jwt_secret": SECRET, "jwt_leeway_s": 0.0},
    )
    base = f"http://127.0.0.1:{gw.port}/"

    def visit() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with browser_page(chromium) as page:
            # a token the gateway refuses at the handshake
            page.goto(f"{base}?token=not-a-valid-token")
            page.wait_for_function(
                f"() => ({BANNER})()?.includes('token rejected')", timeout=15_000
            )
            out["bad"] = page.evaluate(BANNER)
            out["bad_code"] = page.get_attribute("#banner", "data-refusal")
            # a valid token: live, no banner; then it expires: close 4001, no reconnect
            page.goto(f"{base}?token={_token(4)}")
            page.wait_for_function("() => window.wall?.tilesWithValues() >= 20", timeout=10_000)
            out["live"] = page.evaluate(BANNER)
            page.wait_for_function(
                f"() => ({BANNER})()?.includes('token rejected')", timeout=15_000
            )
            out["expired"] = page.evaluate(BANNER)
            out["expired_code"] = page.get_attribute("#banner", "data-refusal")
            out["closes"] = page.evaluate("() => window.gatewayClient.stats.closes")
            out["errors"] = page.errors
        return out

    got = await in_browser(visit)
    assert got["bad_code"] == "401"
    assert "give the wall a valid token" in got["bad"]
    assert got["live"] is None
    assert got["expired_code"] == "4001" and "expired" in got["expired"]
    assert "give the wall a valid token" in got["expired"]
    assert got["closes"][-1] == 4001
    assert got["errors"] == []


def test_a_major_alarm_shows_before_offline_and_stale_a_warning_after() -> None:
    """A device whose `offline` rule raised a major alarm showed the offline look, not
    the alarm's, although the docs say an alarm takes the tile (found by an outside
    check)."""
    meta = json.dumps(str(ROOT / "dashboard/js/meta.js"))
    script = f"""
      import {{ Meta }} from {meta};
      const out = {{}};
      for (const severity of ["critical", "major", "minor", "warning"]) {{
        const m = new Meta();
        m.alarmTopic("$alarms/r/plant/p1", {{ fields: {{ topic: "plant/p1", active: true,
          severity, state: "active_unacked", raised_at: 0 }} }});
        out[severity] = ["live", "offline", "stale"].map((how) => m.state("plant/p1",
          {{ fields: {{}}, online: how !== "offline", stale: how === "stale" }}));
      }}
      out.none = new Meta().state("plant/p1", {{ fields: {{}}, online: false, stale: false }});
      console.log(JSON.stringify(out));
    """
    got = run_module_script(script)
    assert got["critical"] == got["major"] == ["alarm", "alarm", "alarm"]
    assert got["minor"] == got["warning"] == ["warning", "offline", "stale"]
    assert got["none"] == "offline"


def test_a_tiles_label_stays_inside_the_frame_its_state_draws() -> None:
    """An alarm tile's frame (d/5 wide) crossed its name and value, drawn 0.12 h in
    (found by an outside check). For every state and tile height, both lines lie
    inside the frame and apart from each other."""
    colour = json.dumps(str(ROOT / "dashboard/js/colour.js"))
    grid = json.dumps(str(ROOT / "dashboard/js/grid.js"))
    script = f"""
      import {{ frameWidth }} from {colour};
      import {{ labelLayout }} from {grid};
      const out = [];
      for (const state of ["normal", "warning", "alarm", "stale", "offline"]) {{
        for (const novalue of [false, true]) {{
          for (let h = 32; h <= 160; h += 2) {{  // wide tiles are 2.2 rem tall at least
            const w = 3 * h, inset = frameWidth(state, w, h, novalue);
            const l = labelLayout(w, h, inset);
            out.push({{ state, novalue, h, inset, ...l }});
          }}
        }}
      }}
      console.log(JSON.stringify(out));
    """
    rows = run_module_script(script)
    assert {r["state"] for r in rows if r["inset"] and not r["novalue"]} == {"alarm", "offline"}
    for r in rows:
        assert r["pad"] >= r["inset"] + 1, r  # inside the frame, left and right
        assert r["nameY"] >= r["inset"] + 1, r  # the name below the frame's top
        assert r["valueY"] + r["big"] <= r["h"] - r["inset"] - 1, r  # the value above its bottom
        assert r["nameY"] + r["small"] <= r["valueY"], r  # the two lines apart
        assert r["small"] >= 0.2 * r["h"] and r["big"] >= 0.3 * r["h"], r  # still readable
