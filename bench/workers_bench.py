"""`gateway run --workers N`: CPU per delivered frame per worker, against one process.

    python bench/workers_bench.py [--quick] [--devices D] [--screens S] [--seconds T]

Runs, each a real `gateway run --simulate D` (the embedded fleet, 1 message/s per
device) with its log drained to a file:

1. `--workers 1`, no screens, then S screens;
2. `--workers 2`, no screens, then S screens.

Without screens a process costs its fixed share: the ingest (the one process, or the
parent), a worker's replica of the change stream and its hub ticks. With screens,
the CPU above that fixed share divided by the frames delivered is the marginal cost
per frame, per serving process; the ingest is counted once (in the parent).

The screens (this process, plain sockets, no compression, half `#`, half one
site, at the default 10 Hz) are opened before the window and read everything. In
the window the CPU time of every gateway process (`/proc/PID/stat`) and the frames each
serving process wrote (`gateway_websocket_frames_sent_total` on its own admin
port) are measured; the result is CPU microseconds per delivered frame per serving
process, and the cores each process used. On a 2-core machine shared with the
screens and other work, timings are upper bounds; the load average is reported.
Results: bench/results/workers.json (bench/results/quick/ with --quick).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import machine_info, results_path  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    sock = trio.socket.socket()
    with sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(admin: int) -> tuple[float, dict[float, float]]:
    """Frames written, and the ingest-to-send histogram (le -> cumulative count)."""
    _, body = await http_get(admin, "/metrics")
    m = re.search(rb"^gateway_websocket_frames_sent_total (\S+)$", body, re.M)
    buckets = {
        float(le): float(n)
        for le, n in re.findall(
            rb'^gateway_ingest_to_send_seconds_bucket\{le="([^"]+)"\} (\S+)$', body, re.M
        )
    }
    return (float(m.group(1)) if m else 0.0), buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of the window's samples."""
    diff = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = diff[-1][1] if diff else 0.0
    if not total:
        return None
    return next(le for le, n in diff if n >= q * total)


def text(log: Path) -> str:
    return log.read_text()


async def serving(proc: trio.Process, log: Path, workers: int) -> dict[str, Any]:
    """Wait until ready; the processes: {"ingest": pid or None, "serve": [(pid, admin)]}.
    Every admin port is a free one (admin port 0): the parent's is in its log."""
    with trio.fail_after(60):
        while not (m := re.search(r"admin on http://127\.0\.0\.1:(\d+)/", text(log))):
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited: {text(log)[-2000:]}")
            await trio.sleep(0.1)
    admin = int(m.group(1))
    with trio.fail_after(60):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited: {text(log)[-2000:]}")
            try:
                status, _ = await http_get(admin, "/readyz")
            except OSError:
                status = 0
            if status == 200:
                break
            await trio.sleep(0.1)
    if workers == 1:
        return {"ingest": None, "serve": [(proc.pid, admin)]}
    with trio.fail_after(60):
        while True:
            detail = orjson.loads((await http_get(admin, "/readyz"))[1])["checks"]["workers"]
            found = re.findall(r"serving \(pid (\d+), admin (\d+)\)", detail["detail"])
            if len(found) == workers:
                return {"ingest": proc.pid, "serve": [(int(p), int(a)) for p, a in found]}
            await trio.sleep(0.1)


def _frame(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Screens:
    def __init__(self) -> None:
        self.bytes = 0
        self.open = 0

    async def screen(self, port: int, flt: str, task_status: trio.TaskStatus[None]) -> None:
        sock = trio.socket.socket()
        with sock:
            await sock.connect(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            await sock.send(
                (
                    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            sub = {"type": "subscribe", "id": "s", "filters": [flt]}
            await sock.send(_frame(orjson.dumps(sub)))
            self.open += 1
            task_status.started()
            while data := await sock.recv(1 << 20):
                self.bytes += len(data)


async def run_one(
    workers: int, screens: int, devices: int, seconds: float, logdir: Path
) -> dict[str, Any]:
    port = free_port()
    log = logdir / f"gateway-w{workers}-s{screens}.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway", "run", "--workers", str(workers),
             "--simulate", str(devices), "--port", str(port), "--admin-port", "0",
             "--status-interval", "0"],
            stdout=out, stderr=out, cwd=ROOT,
        )  # fmt: skip
    try:
        procs = await serving(proc, log, workers)
        clients = Screens()
        async with trio.open_nursery() as nursery:
            for i in range(screens):
                flt = "#" if i % 2 == 0 else "berlin/#"
                await nursery.start(clients.screen, port, flt)
            await trio.sleep(3.0)  # joins and snapshots done: steady state
            pids = [pid for pid, _ in procs["serve"]]
            if procs["ingest"] is not None:
                pids.append(procs["ingest"])
            cpu0 = {pid: cpu_s(pid) for pid in pids}
            s0 = [await scrape(a) for _, a in procs["serve"]]
            b0, t0 = clients.bytes, time.monotonic()
            await trio.sleep(seconds)
            elapsed = time.monotonic() - t0
            cpu = {pid: cpu_s(pid) - cpu0[pid] for pid in pids}
            s1 = [await scrape(a) for _, a in procs["serve"]]
            frames = [b[0] - a[0] for a, b in zip(s0, s1, strict=True)]
            age = {
                q: max((quantile(a[1], b[1], q) or 0.0) for a, b in zip(s0, s1, strict=True))
                for q in (0.5, 0.99)
            }
            received = clients.bytes - b0
            nursery.cancel_scope.cancel()
    finally:
        proc.terminate()
        with trio.move_on_after(30):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    serve = [
        {
            "cores": round(cpu[pid] / elapsed, 3),
            "frames_per_s": round(n / elapsed, 1),
            "cpu_us_per_frame": round(cpu[pid] / n * 1e6, 1) if n else None,
        }
        for (pid, _), n in zip(procs["serve"], frames, strict=True)
    ]
    ingest = procs["ingest"]
    return {
        "workers": workers,
        "screens": screens,
        "seconds": round(elapsed, 2),
        "ingest_cores": round(cpu[ingest] / elapsed, 3) if ingest is not None else None,
        "serve": serve,
        "total_cores": round(sum(cpu.values()) / elapsed, 3),
        "frames_per_s": round(sum(frames) / elapsed, 1),
        "received_mb_per_s": round(received / elapsed / 1e6, 2),
        # gateway receive to frame written (bucket bounds; the worst serving process)
        "ingest_to_send_p50_s": age[0.5],
        "ingest_to_send_p99_s": age[0.99],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        runs = [
            await run_one(w, s, args.devices, args.seconds, logdir)
            for w in (1, 2)
            for s in (0, args.screens)
        ]
    summary = []
    for idle, busy in (runs[0:2], runs[2:4]):
        per = []
        for i, (fixed, load) in enumerate(zip(idle["serve"], busy["serve"], strict=True)):
            extra = load["cores"] - fixed["cores"]
            fps = load["frames_per_s"]
            per.append(
                {
                    "process": i,
                    "fixed_cores": fixed["cores"],
                    "cores": load["cores"],
                    "frames_per_s": fps,
                    "marginal_us_per_frame": round(extra / fps * 1e6, 1) if fps else None,
                }
            )
        summary.append(
            {
                "workers": busy["workers"],
                "parent_cores": busy["ingest_cores"],
                "total_cores": busy["total_cores"],
                "frames_per_s": busy["frames_per_s"],
                "ingest_to_send_p50_s": busy["ingest_to_send_p50_s"],
                "ingest_to_send_p99_s": busy["ingest_to_send_p99_s"],
                "serving": per,
            }
        )
    return {
        "machine": machine_info(),
        "loadavg": os.getloadavg(),
        "devices": args.devices,
        "screens": args.screens,
        "runs": runs,
        "summary": summary,
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        f"{result['devices']:,} devices at 1 Hz, {result['screens']} screens at 10 Hz "
        f"(half `#`, half one site); load average {result['loadavg'][0]:.2f} at the end.",
        "",
        "| run | process | fixed cores (no screens) | cores with screens | frames/s | "
        "marginal CPU µs per frame |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        name = f"--workers {s['workers']}"
        if s["parent_cores"] is not None:
            rows.append(f"| {name} | parent (ingest, replication) | | {s['parent_cores']} | | |")
        for p in s["serving"]:
            who = f"worker {p['process']}" if s["workers"] > 1 else "the one process (+ ingest)"
            rows.append(
                f"| {name} | {who} | {p['fixed_cores']} | {p['cores']} | {p['frames_per_s']} | "
                f"{p['marginal_us_per_frame']} |"
            )
        rows.append(f"| {name} | all processes | | {s['total_cores']} | {s['frames_per_s']} | |")
    rows.append("")
    rows.extend(
        f"--workers {s['workers']}: gateway receive to frame written p50 ≤ "
        f"{s['ingest_to_send_p50_s']} s, p99 ≤ {s['ingest_to_send_p99_s']} s "
        "(histogram bucket bounds; the replication is inside this with workers)."
        for s in result["summary"]
    )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 devices, 100 screens, 8 s")
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--screens", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    args.devices = args.devices or (1000 if args.quick else 2000)
    args.screens = args.screens if args.screens is not None else (100 if args.quick else 400)
    args.seconds = args.seconds or (8.0 if args.quick else 20.0)
    result = trio.run(main_async, args)
    path = results_path("workers", args.quick)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
