"""Screenshots of the big screen for docs/img/: a gateway with a simulated fleet,
Debian's Chromium through Playwright, 1920x1080 and 3840x2160.

    .venv/bin/python scripts/screenshots.py [--devices 2000]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench.report import CHROMIUM_ARGS, gateway_process

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=2000)
    args = ap.parse_args()
    with gateway_process("--simulate", str(args.devices)) as gw:
        out = ROOT / "docs" / "img"
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for w, h in ((1920, 1080), (3840, 2160)):
                page = browser.new_page(viewport={"width": w, "height": h})
                page.goto(f"http://127.0.0.1:{gw.port}/?title=Plant%20wall")
                page.wait_for_timeout(8000)  # a few chart points
                path = out / f"dashboard-{w}x{h}.jpg"
                page.screenshot(path=str(path), type="jpeg", quality=80)
                print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")
                page.close()
            browser.close()


if __name__ == "__main__":
    main()
