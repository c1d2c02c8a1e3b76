"""The machine's own loop lag: the floor under every loop-lag figure taken on it.

A Trio loop runs the gateway's lag sampler (``gateway.looplag.LoopLag``, a wake-up
every 10 ms) and one task of pure Python in steps of ``--step-ms`` with a checkpoint
after each, ``--load`` of a core in all; nothing else (no sockets, no allocation that
lives). No step is longer than ``--step-ms``, so any lag sample much over it is the
machine's: the thread was preempted (by the kernel, or by the hypervisor: a guest
counts a vCPU's descheduled time as its own CPU time, so a step's CPU time grows too).
``--busy-other`` keeps the other CPUs busy with a spinning process each (as the load
generator and the broker do during a probe). ``--net-mbps M`` also has the loop write
M MB a second over loopback TCP to ``--conns`` connections (writes of ``--write-kib``,
its share of each period), read and dropped by a process of its own: the kernel's network work
for those bytes (both sides of loopback) without the gateway's.

    python bench/machine_floor.py [--seconds 20] [--load 0.7] [--busy-other]
                                  [--net-mbps 40 --conns 2000] [--json OUT]

Reports the lag window as the gateway's probes do (p50/p99/max, samples over 5 and
10 ms), and the steps whose CPU time came out over 3 times their median (inflated:
work the same as every other step), the longest, and the thread's run-queue wait.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from gateway.looplag import BUCKETS, LoopLag


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def calibrate(step_s: float) -> int:
    """Iterations of :func:`spin` that take ``step_s`` (median of 21 tries)."""
    n = 1000
    while True:
        t0 = time.perf_counter()
        spin(n)
        took = time.perf_counter() - t0
        if took > 0.002:
            break
        n *= 2
    per = []
    for _ in range(21):
        t0 = time.perf_counter()
        spin(n)
        per.append((time.perf_counter() - t0) / n)
    return max(1, int(step_s / sorted(per)[10]))


def run_delay_ns() -> int:
    """Time this thread waited on a run queue (schedstat's second field)."""
    with open(f"/proc/self/task/{os.getpid()}/schedstat") as f:
        return int(f.read().split()[1])


SINK = """
import selectors, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4096)
print(srv.getsockname()[1], flush=True)
sel = selectors.DefaultSelector(); sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            c, _ = srv.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try:
                if not key.fileobj.recv(1 << 16):
                    sel.unregister(key.fileobj); key.fileobj.close()
            except OSError:
                sel.unregister(key.fileobj); key.fileobj.close()
"""


async def measure(
    seconds: float,
    load: float,
    step_s: float,
    n: int,
    net_mbps: float,
    port: int,
    conns: int,
    write: int,
) -> dict[str, Any]:
    lag = LoopLag(0.01)
    cpu: list[float] = []
    wall: list[float] = []
    socks = []
    for _ in range(conns if net_mbps else 0):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    chunk = b"x" * write
    sent = dropped = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(lag.run)
        await trio.sleep(0.5)
        delay0 = run_delay_ns()
        with lag.window() as window:
            period = 0.01
            per_period = int(net_mbps * 1e6 * period / len(chunk)) if socks else 0
            end = trio.current_time() + seconds
            next_at = trio.current_time()
            k = 0
            while trio.current_time() < end:
                for _ in range(per_period):  # as a fan-out writes: non-blocking, 8 a step
                    k += 1
                    try:
                        sent += socks[k % len(socks)].send(chunk)
                    except BlockingIOError:
                        dropped += 1
                    if not k & 7:
                        await trio.lowlevel.checkpoint()
                busy_until = next_at + load * period
                while trio.current_time() < busy_until:
                    c, w = time.thread_time(), time.perf_counter()
                    spin(n)
                    cpu.append(time.thread_time() - c)
                    wall.append(time.perf_counter() - w)
                    await trio.lowlevel.checkpoint()
                next_at += period
                await trio.sleep_until(next_at)
        delay = run_delay_ns() - delay0
        nursery.cancel_scope.cancel()
    for sock in socks:
        sock.close()
    med = sorted(cpu)[len(cpu) // 2]
    inflated = [c for c in cpu if c > 3 * med]
    over = {f"over_{ms}ms": sum(window.counts[BUCKETS.index(ms / 1000) + 1 :]) for ms in (5, 10)}
    return {
        "seconds": seconds,
        "load": load,
        "step_ms": round(step_s * 1e3, 2),
        "loop_lag": {**window.summary(), **over, "samples": window.count},
        "over_10ms_pct": round(100 * over["over_10ms"] / max(1, window.count), 2),
        "steps": len(cpu),
        "step_cpu_median_ms": round(med * 1e3, 3),
        "steps_inflated_3x": len(inflated),
        "steps_inflated_pct": round(100 * len(inflated) / max(1, len(cpu)), 3),
        "step_cpu_max_ms": round(max(cpu) * 1e3, 2),
        "step_wall_max_ms": round(max(wall) * 1e3, 2),
        "run_queue_wait_ms": round(delay / 1e6, 1),
        "net_mb_sent": round(sent / 1e6, 1),
        "net_writes_refused_full": dropped,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--load", type=float, default=0.7, help="share of a core the loop works")
    ap.add_argument("--step-ms", type=float, default=0.5, help="work between two checkpoints")
    ap.add_argument("--busy-other", action="store_true", help="a spinning process per other CPU")
    ap.add_argument("--net-mbps", type=float, default=0.0, help="MB/s written over loopback")
    ap.add_argument("--conns", type=int, default=2000, help="connections the bytes go to")
    ap.add_argument(
        "--write-kib", type=float, default=14,
        help="bytes per write (KiB; the 2,000-screen probe: ~14 KiB frames, 290 MB/s)",
    )  # fmt: skip
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args()
    if not 0 < args.load < 1:
        ap.error("--load must be between 0 and 1")
    n = calibrate(args.step_ms / 1000)
    spinners: list[subprocess.Popen[bytes]] = []
    if args.busy_other:
        code = f"import time\nend = time.monotonic() + {args.seconds + 3}\n"
        code += "while time.monotonic() < end:\n    sum(range(10000))\n"
        spinners = [
            subprocess.Popen([sys.executable, "-c", code])
            for _ in range(max(1, (os.cpu_count() or 2) - 1))
        ]
    sink, port = None, 0
    if args.net_mbps:
        sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        spinners.append(sink)
    try:
        out = trio.run(
            measure, args.seconds, args.load, args.step_ms / 1000, n,
            args.net_mbps, port, args.conns, int(args.write_kib * 1024),
        )  # fmt: skip
    finally:
        for p in spinners:
            p.terminate()
            p.wait()
    out["busy_other"] = args.busy_other
    out["net_mbps"] = args.net_mbps
    with open("/proc/loadavg") as f:
        out["load_average_1min"] = float(f.read().split()[0])
    print(json.dumps(out), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
