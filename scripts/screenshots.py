"""Screenshots of the big screen for docs/img/: a gateway with a simulated fleet,
Debian's Chromium through Playwright, 1920x1080 and 3840x2160.

    .venv/bin/python scripts/screenshots.py [--devices 2000]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import time

from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=2000)
    args = ap.parse_args()
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--simulate",
            str(args.devices),
            "--port",
            "0",
            "--admin-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert gw.stderr is not None
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", gw.stderr.readline())
            port = int(m.group(1)) if m else None
        assert port, "the gateway did not start"
        out = ROOT / "docs" / "img"
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for w, h in ((1920, 1080), (3840, 2160)):
                page = browser.new_page(viewport={"width": w, "height": h})
                page.goto(f"http://127.0.0.1:{port}/?title=Plant%20wall")
                page.wait_for_timeout(8000)  # a few chart points
                path = out / f"dashboard-{w}x{h}.jpg"
                page.screenshot(path=str(path), type="jpeg", quality=80)
                print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")
                page.close()
            browser.close()
    finally:
        gw.terminate()
        gw.wait(timeout=10)


if __name__ == "__main__":
    main()
