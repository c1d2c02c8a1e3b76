"""Screenshots of the wall for docs/img/, in Debian's Chromium through Playwright (JPEG):

* dashboard-1920x1080.jpg: the automatic wall, a simulated fleet;
* wall-user-devices.jpg: the automatic wall with a user's own devices (a real mosquitto,
  paho publishing plant/<line>/<device> and yard/<tank> topics the project never wrote);
* wall-plant-1920x1080.jpg, wall-plant-3840x2160.jpg: the same devices on the configured
  plant wall (dashboard/walls/plant.toml);
* wall-disconnected.jpg: the gateway stopped, past the grace period;
* wall-alarm.jpg: the plant wall with an alarm rule: one pump's overpressure alarm active.

    .venv/bin/python scripts/screenshots.py [--devices 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench.report import CHROMIUM_ARGS, gateway_process, stop
from tests.broker import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"
LINES = {"line1": 24, "line2": 24, "line3": 18, "line4": 12}


def shoot(page, name: str, quality: int = 80) -> None:  # type: ignore[no-untyped-def]
    path = OUT / name
    page.screenshot(path=str(path), type="jpeg", quality=quality)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")


def plant_publisher(port: int, stop_event: threading.Event) -> None:
    """A user's own plant: pumps and valves per line, tanks in the yard, once a second."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    rng = random.Random(7)
    t0 = time.time()
    while not stop_event.is_set():
        t = time.time() - t0
        for li, (line, pumps) in enumerate(LINES.items()):
            for i in range(pumps):
                base = 3.0 + li * 0.6 + (i % 5) * 0.15
                p = base + 0.3 * math.sin(t / 9 + i) + rng.gauss(0, 0.05)
                if line == "line3" and i == 4:
                    p += 2.5  # one pump runs high: it must not flatten the other charts
                flow = round(90 + 12 * p + rng.gauss(0, 2))
                payload = {"pressure_bar": round(p, 2), "flow_lpm": flow}
                client.publish(f"plant/{line}/pump-{i + 1}", json.dumps(payload))
            client.publish(f"plant/{line}/valve-1", json.dumps({"position_pct": 40 + li * 10}))
        for tank in "abc":
            level = 2.0 + 0.5 * math.sin(t / 30 + ord(tank))
            client.publish(f"yard/tank-{tank}", json.dumps({"level_m": round(level, 2)}))
        stop_event.wait(1.0)
    client.loop_stop()
    client.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=2000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        with gateway_process("--simulate", str(args.devices)) as gw:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.goto(f"http://127.0.0.1:{gw.port}/#field=temperature")
            page.wait_for_timeout(10_000)  # a few chart points
            shoot(page, "dashboard-1920x1080.jpg", 60)
            page.close()
        with tempfile.TemporaryDirectory() as tmp:
            broker_port = free_port()
            conf = pathlib.Path(tmp) / "mosquitto.conf"
            conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n")
            broker = subprocess.Popen(
                [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            done = threading.Event()
            try:
                time.sleep(0.5)
                publisher = threading.Thread(target=plant_publisher, args=(broker_port, done))
                publisher.start()
                common = (
                    f'[mqtt]\nurl = "mqtt://127.0.0.1:{broker_port}"\n'
                    'subscriptions = [{filter = "plant/#"}, {filter = "yard/#"}]\n'
                    'routes = [{filter = "plant/#"}, {filter = "yard/#"}]\n'
                )
                auto = pathlib.Path(tmp) / "auto.toml"
                auto.write_text(common)
                plant = pathlib.Path(tmp) / "plant.toml"
                wall = ROOT / "dashboard" / "walls" / "plant.toml"
                # metadata and one alarm rule: line3's pump-5 runs high, so an alarm is active
                insight = (
                    '[[meta.fields]]\nfilter = "plant/#"\nfield = "pressure_bar"\n'
                    'name = "Pressure"\nunit = "bar"\ndecimals = 1\n'
                    '[[alarms.rules]]\nname = "overpressure"\nfilter = "plant/#"\n'
                    'condition = "high"\nfield = "pressure_bar"\nthreshold = 6.5\n'
                    'severity = "critical"\n'
                    'message = "{device}: pressure {value:.1f} {unit} above {threshold} {unit}"\n'
                )
                plant.write_text(f'[server]\nwall_file = "{wall}"\n' + common + insight)
                with gateway_process("--config", str(auto)) as gw:
                    page = browser.new_page(viewport={"width": 1920, "height": 1080})
                    page.goto(f"http://127.0.0.1:{gw.port}/?grace=3#field=pressure_bar")
                    page.wait_for_timeout(12_000)
                    shoot(page, "wall-user-devices.jpg", 75)
                    stop(gw.proc)  # the gateway goes away
                    page.wait_for_timeout(6_000)
                    shoot(page, "wall-disconnected.jpg", 75)
                    page.close()
                with gateway_process("--config", str(plant)) as gw:
                    for w, h in ((1920, 1080), (3840, 2160)):
                        page = browser.new_page(viewport={"width": w, "height": h})
                        page.goto(f"http://127.0.0.1:{gw.port}/")
                        page.wait_for_timeout(12_000)
                        shoot(page, f"wall-plant-{w}x{h}.jpg", 75 if w < 3000 else 25)
                        if w < 3000:  # the active alarm: tile frame, KPI, list and event
                            shoot(page, "wall-alarm.jpg", 75)
                        page.close()
            finally:
                done.set()
                broker.terminate()
                broker.wait(5)
        browser.close()


if __name__ == "__main__":
    main()
