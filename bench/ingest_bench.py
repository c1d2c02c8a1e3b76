"""MQTT ingest throughput: messages per second from a real mosquitto into topic state.

Consumers, measured in the same run against the same broker and the same stream:
  ours     the gateway's MqttIngest: JSON decode, route, deadband, state update
  raw      the same Trio-native adapter (our framing for QoS 0, paho for the
           protocol) with a handler that only counts
  mosquitto_sub  the C client, output to /dev/null (the ceiling)

Each run: the consumer connects and subscribes and is then stopped (SIGSTOP);
parallel `mosquitto_pub -l` processes (C) publish N QoS 0 messages (JSON, 4 fields and
a timestamp, over 8 topics) and the broker, its queue limits lifted, buffers them;
then the consumer continues (SIGCONT) and drains the stream as fast as it can read.
The rate is messages divided by the time from its first message to its last, so the
publishers' speed does not enter. Consumer on CPU 1, broker and publishers on CPU 0.

    python bench/ingest_bench.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUBLISHERS = 8


def start_broker(workdir: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        f"max_queued_bytes 0\nmax_inflight_messages 0\nuser root\n"
        f"log_dest file {workdir}/mosquitto.log\n"
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.sched_setaffinity(proc.pid, {0})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def publish(port: int, total: int, workdir: pathlib.Path) -> None:
    per = total // PUBLISHERS
    procs = []
    for p in range(PUBLISHERS):
        lines = workdir / f"pub{p}.txt"
        now = time.time()
        with lines.open("w") as f:
            for i in range(per):
                f.write(
                    json.dumps(
                        {
                            "temperature": 20 + (i % 100) / 10,
                            "humidity": 40 + i % 7,
                            "power": 1000 + i,
                            "vibration": (i % 13) / 100,
                            "ts": now,
                        }
                    )
                    + "\n"
                )
        procs.append(
            subprocess.Popen(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-q",
                    "0",
                    "-l",
                    "-t",
                    f"telemetry/site{p}/line/dev{p}",
                ],
                stdin=lines.open("rb"),
                stdout=subprocess.DEVNULL,
            )
        )
        os.sched_setaffinity(procs[-1].pid, {0})
    for proc in procs:
        proc.wait(timeout=300)


def paused_publish(
    consumer: subprocess.Popen[str], port: int, total: int, workdir: pathlib.Path
) -> None:
    """Publish while the consumer is stopped (SIGSTOP), so the broker buffers the whole
    stream; then let it run (SIGCONT): it drains as fast as it can read, whatever the
    publishers' speed."""
    consumer.send_signal(signal.SIGSTOP)
    try:
        publish(port, total, workdir)
        time.sleep(0.5)  # the broker has queued the last messages
    finally:
        consumer.send_signal(signal.SIGCONT)


def consume_inprocess(kind: str, port: int, total: int, protocol: str) -> dict[str, float]:
    """Runs in a child process: 'ours' or 'raw'."""
    import trio

    from gateway.clock import Clock
    from gateway.config import load_config
    from gateway.core.state import StateStore
    from gateway.ingest.mqtt import MqttIngest

    os.sched_setaffinity(0, {1})
    cfg = load_config(
        overrides={
            "mqtt": {
                "url": f"mqtt://127.0.0.1:{port}",
                "protocol": protocol,
                "subscriptions": [{"filter": "telemetry/#", "qos": 0}],
            }
        }
    )
    result: dict[str, float] = {}

    async def main() -> None:
        store = StateStore("bench")
        ingest = MqttIngest(cfg.mqtt, store, Clock(), 1024)
        count = 0
        first = last = 0.0
        done = trio.Event()
        full_handle = ingest.handle

        def handle(topic: str, payload: bytes) -> None:
            nonlocal count, first, last
            if kind == "ours":
                full_handle(topic, payload)
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count >= total:
                last = time.perf_counter()
                done.set()

        ingest.handle = handle  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.run)
            with trio.fail_after(10):
                while not ingest.connected:
                    await trio.sleep(0.01)
            await trio.sleep(0.3)
            print("ready", flush=True)
            with trio.fail_after(300):
                await done.wait()
            nursery.cancel_scope.cancel()
        result.update(
            messages=count,
            seconds=last - first,
            rate=count / (last - first),
            rejected=sum(ingest.stats.rejected.values()),
            topics=len(store),
        )

    trio.run(main)
    return result


def run_consumer(
    kind: str, port: int, total: int, workdir: pathlib.Path, protocol: str = "3.1.1"
) -> dict[str, float]:
    if kind == "mosquitto_sub":
        proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-t",
                "telemetry/#",
                "-C",
                str(total),
                "-F",
                "%U",
            ],  # %U: receive time, to time first..last message
            stdout=subprocess.PIPE,
            text=True,
        )
        os.sched_setaffinity(proc.pid, {1})
        time.sleep(0.5)
        paused_publish(proc, port, total, workdir)
        out, _ = proc.communicate(timeout=300)
        stamps = [float(x) for x in out.split()]
        return {
            "messages": len(stamps),
            "seconds": stamps[-1] - stamps[0],
            "rate": len(stamps) / (stamps[-1] - stamps[0]),
        }
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--consume",
            kind,
            "--port",
            str(port),
            "--total",
            str(total),
            "--protocol",
            protocol,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    paused_publish(proc, port, total, workdir)
    out, _ = proc.communicate(timeout=300)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer messages")
    ap.add_argument("--write", action="store_true", help="rewrite docs/benchmarks.md")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per consumer, the fastest kept (a shared machine only ever slows one)",
    )
    ap.add_argument("--consume", choices=["ours", "raw"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, default=200_000, help=argparse.SUPPRESS)
    ap.add_argument("--protocol", default="3.1.1", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.consume:
        print(
            json.dumps(consume_inprocess(args.consume, args.port, args.total, args.protocol)),
            flush=True,
        )
        return
    if not shutil.which("mosquitto") or not shutil.which("mosquitto_pub"):
        raise SystemExit("needs mosquitto and mosquitto-clients (make bench installs them)")
    from bench.report import machine_info, results_path, write_section

    total = 40_000 if args.quick else 200_000
    results: dict[str, object] = {
        "machine": machine_info(),
        "messages": total,
        "repeat": max(1, args.repeat),
        "load_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        broker, port = start_broker(workdir)
        try:
            runs = [
                ("mosquitto_sub", "3.1.1"),
                ("raw", "3.1.1"),
                ("ours", "3.1.1"),
                ("raw", "5"),
                ("ours", "5"),
            ]
            for kind, protocol in runs:
                name = kind if protocol == "3.1.1" else f"{kind}-v5"
                print(f"ingest: {name}, {total:,} messages ...", flush=True)
                for _ in range(max(1, args.repeat)):
                    r = run_consumer(kind, port, total, workdir, protocol)
                    if name not in results or r["rate"] > results[name]["rate"]:  # type: ignore[index]
                        results[name] = r
                    print(
                        f"  {r['rate']:,.0f} messages/s ({r['messages']:,} in "
                        f"{r['seconds']:.2f} s)",
                        flush=True,
                    )
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    out = results_path("ingest", args.quick)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"raw results: {out.relative_to(ROOT)}")
    if not args.write:
        return
    ours, raw, sub = results["ours"], results["raw"], results["mosquitto_sub"]
    ratio = ours["rate"] / raw["rate"]  # type: ignore[index]
    met = ours["rate"] >= 50_000 and ratio >= 0.6  # type: ignore[index,operator]
    body = (
        f"Command: `make bench` (`python bench/ingest_bench.py --write`). {total:,} QoS 0 "
        f"messages (JSON: 4 fields and a timestamp) from {PUBLISHERS} `mosquitto_pub -l` "
        f"processes through a real mosquitto, buffered by the broker while the consumer is "
        f"stopped, then drained by it (pinned to CPU 1; broker on CPU 0); rate = messages / "
        f"(last - first receive time); the fastest of {results['repeat']} run(s) per "
        f"consumer (1-minute load average {results['load_before']:.1f} at the start).\n\n"
        "| consumer | messages/s |\n|---|---:|\n"
        f"| **ours**: the Trio reader + JSON decode, route, deadband, state update | "
        f"**{ours['rate']:,.0f}** |\n"  # type: ignore[index]
        f"| raw: the same reader, handler only counts | {raw['rate']:,.0f} |\n"  # type: ignore[index]
        f"| `mosquitto_sub` (C) | {sub['rate']:,.0f} |\n"
        f"| ours with MQTT 5 | {results['ours-v5']['rate']:,.0f} |\n"  # type: ignore[index]
        f"| raw with MQTT 5 | {results['raw-v5']['rate']:,.0f} |\n\n"  # type: ignore[index]
        "The reader frames the stream itself and hands a QoS 0 PUBLISH straight to the "
        'handler; paho handles every other packet (docs/architecture.md, "MQTT ingest"). '
        "So MQTT 5 costs a QoS 0 message only the skipping of its properties (paho "
        "builds a `Properties` object for each PUBLISH it decodes, QoS 1/2 only now).\n\n"
        f"Target: at least 50,000 messages/s into state and at least 0.6 of raw receive: "
        f"**{'met' if met else 'NOT met'}** ({ours['rate']:,.0f}/s, {ratio:.2f} of raw). "  # type: ignore[index]
        "The ratio was set when raw receive was paho's; our own framing receives several "
        "times faster (the raw rows), so the same handler is now most of the whole."
    )
    write_section(ROOT / "docs" / "benchmarks.md", "ingest", "MQTT ingest", body)
    print("docs/benchmarks.md updated")


if __name__ == "__main__":
    main()
