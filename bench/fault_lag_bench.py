"""Loop lag of a gateway process through every broker fault, while data flows.

The reliability tests (tests/reliability/test_mqtt_faults.py) run each broker fault
with the gateway in the test's own process, beside its 100 screens: what they assert
about the loop lag is a generous bound, and what they measure is the gateway and its
screens together. Here the gateway is a process of its own (as deployed), on CPU 0 with
``--pin``; on the other CPU: mosquitto, ``devices-sim`` publishing 1,000 devices at
5 Hz (5,000 msg/s), the 100 Python screens and the rig's TCP relay (the tests' rig,
tests/reliability/mqtt_rig.py, with the same faults). For a quiet window, a flood (four
``mosquitto_pub -l`` publishing 15,000 messages each as fast as they can) and then each
fault, the gateway's loop lag from its /metrics, over the fault, the outage, the
recovery until every screen holds data the devices sent after it, and 2 s more.

The rig reads the gateway's MQTT state from ``/readyz`` on the admin port, every 20 ms
(50 small requests a second, inside every window measured).

    python bench/fault_lag_bench.py --pin [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hub_stalls_bench import lag_summary, metric, scrape  # noqa: E402
from tests.broker import free_port  # noqa: E402
from tests.conftest import stop_process  # noqa: E402
from tests.reliability.mqtt_rig import FAULTS, Rig  # noqa: E402

SCREENS = 100
QUIET_S = 10.0
FLOOD_PUBLISHERS = 4
FLOOD_EACH = 15_000
#: each fault's window goes on this long after every screen holds fresh data
AFTER_S = 2.0


class RemoteMqtt:
    """What the rig reads of the gateway's MQTT ingest, from its ``/readyz``."""

    connected = False
    detail = "not read yet"


class RemoteGateway:
    """A gateway process, seen by the rig as it sees an in-process one."""

    def __init__(self, port: int, admin_port: int, proc: trio.Process) -> None:
        self.port = port
        self.admin_port = admin_port
        self.proc = proc
        self.mqtt = RemoteMqtt()

    def _ready(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as err:  # 503: not ready, same body
            return dict(json.loads(err.read()))

    async def watch(self) -> None:
        while True:
            doc = await trio.to_thread.run_sync(self._ready)
            mqtt = doc["checks"]["mqtt"]
            self.mqtt.connected, self.mqtt.detail = bool(mqtt["ok"]), str(mqtt["detail"])
            await trio.sleep(0.02)


async def start_gateway(
    nursery: trio.Nursery, workdir: Path, mqtt: dict[str, Any], pin: bool
) -> RemoteGateway:
    port, admin = free_port(), free_port()
    cfg = workdir / "gateway.toml"
    cfg.write_text("[mqtt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in mqtt.items()))
    log = (workdir / "gateway.log").open("wb")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "run", "--config", str(cfg),
         "--port", str(port), "--admin-port", str(admin)],
        stdout=log, stderr=log, cwd=ROOT,
    )  # fmt: skip
    if pin:
        os.sched_setaffinity(proc.pid, {0})
    gw = RemoteGateway(port, admin, proc)
    with trio.fail_after(30):
        while True:
            try:
                await trio.to_thread.run_sync(scrape, admin)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((workdir / "gateway.log").read_text()[-3000:]) from None
                await trio.sleep(0.1)
    nursery.start_soon(gw.watch)
    return gw


async def flood_broker(rig: Rig, workdir: Path, admin: int) -> None:
    """FLOOD_PUBLISHERS ``mosquitto_pub -l`` (C, faster than any Python consumer)
    publish FLOOD_EACH messages each as fast as they can, beside the fleet; returns
    once the gateway has ingested them all (the tests' flood,
    tests/ingest/test_mqtt_flood.py, with the gateway in its own process)."""
    lines = workdir / "flood-lines"
    lines.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(FLOOD_EACH)))
    start = ingested(await trio.to_thread.run_sync(scrape, admin))
    procs = []
    for p in range(FLOOD_PUBLISHERS):
        args = [rig.broker.pub, "-h", "127.0.0.1", "-p", str(rig.broker.port), "-q", "0"]
        args += ["-l", "-t", f"telemetry/flood/{p}"]
        with lines.open("rb") as stdin:
            procs.append(
                await trio.lowlevel.open_process(args, stdin=stdin, stdout=subprocess.DEVNULL)
            )
    with trio.fail_after(60):
        for proc in procs:
            await proc.wait()
        # the fleet's messages count too: at least the flood's on top of what came before
        while (
            ingested(await trio.to_thread.run_sync(scrape, admin)) - start
            < FLOOD_PUBLISHERS * FLOOD_EACH
        ):
            await trio.sleep(0.1)


def ingested(text: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("gateway_ingest_messages_total{")
    )


async def run(pin: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"screens": SCREENS, "faults": {}}
    with tempfile.TemporaryDirectory(prefix="faultlag-") as tmp:
        rig = Rig(Path(tmp))
        gw: RemoteGateway | None = None
        try:
            async with trio.open_nursery() as nursery:

                async def factory(**sections: Any) -> RemoteGateway:
                    nonlocal gw
                    gw = await start_gateway(nursery, Path(tmp), sections["mqtt"], pin)
                    return gw

                await rig.start(nursery, factory)
                await rig.start_fleet()
                await rig.add_screens(nursery, SCREENS)
                await rig.wait_for_data()
                rig.settled()
                assert gw is not None
                admin = gw.admin_port

                async def window(name: str, body: Any) -> None:
                    before = await trio.to_thread.run_sync(scrape, admin)
                    t0 = time.monotonic()
                    await body()
                    after = await trio.to_thread.run_sync(scrape, admin)
                    took = time.monotonic() - t0
                    result = {
                        "window_s": round(took, 2),
                        "ingest_msgs_per_s": round((ingested(after) - ingested(before)) / took),
                        "loop_lag": lag_summary(before, after),
                        "gateway_alive": gw.proc.poll() is None,
                        "screens_connected": metric(after, "gateway_websocket_connections"),
                    }
                    out["faults"][name] = result
                    lag = result["loop_lag"]
                    print(
                        f"{name:>24}: {took:5.1f} s, {result['ingest_msgs_per_s']} msg/s, "
                        f"loop lag p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms, "
                        f"over 10 ms {lag['over_10ms']} of {lag['samples']}",
                        flush=True,
                    )

                async def quiet() -> None:
                    await trio.sleep(QUIET_S)

                await window("no fault", quiet)

                async def flood() -> None:
                    await flood_broker(rig, Path(tmp), admin)
                    await trio.sleep(AFTER_S)

                await window("flood", flood)
                for fault in FAULTS:

                    async def cycle(fault: str = fault) -> None:
                        await rig.inject(fault)
                        await rig.while_down(fault)
                        back = time.time()
                        await rig.recover(fault)
                        await rig.wait_for_data(since=back)
                        await trio.sleep(AFTER_S)

                    await window(fault, cycle)
                await rig.stop_fleet()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await rig.close()
                if gw is not None:
                    await stop_process(gw.proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the gateway on CPU 0; this process (screens, relay) and what it starts "
        "(mosquitto, devices-sim) on CPU 1",
    )
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    pin = args.pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})  # inherited by mosquitto and devices-sim
    out = trio.run(run, pin)
    out["pinned"] = pin
    out["command"] = " ".join(["python", "bench/fault_lag_bench.py", *sys.argv[1:]])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
