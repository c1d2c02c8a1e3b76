"""What wall reports cost the gateway: 1,000 walls reporting at the default rate.

A gateway process (pinned to CPU 0) holds N WebSocket connections from this process
(pinned to CPU 1, non-blocking sockets and epoll, frames not parsed). In alternating
windows of W seconds the connections are either quiet or each sends one full
``report`` (every field, about 400 bytes) every ``report_s`` seconds, staggered, as
walls do (docs/protocol.md, "Wall reports"). Both kinds of window send the same
application ``ping`` every 15 s per connection, as walls do. The gateway's CPU
(utime + stime from /proc) in reporting windows minus quiet ones, divided by the
window, is the reports' share of a core; divided by the reports, their cost each.
Then one ``GET /api/walls`` lists the N walls (its time is reported too).

    python bench/walls_bench.py [--walls 1000] [--window 30] [--rounds 2] [--quick]

Writes bench/results/walls.json (quick: bench/results/quick/). The machine is shared
and noisy: the figure is an upper bound; the load average is recorded with it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pathlib
import resource
import selectors
import socket
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import masked_text  # noqa: E402
from bench.report import gateway_process, machine_info, results_path  # noqa: E402
from gateway.core.walls import WallsConfig  # noqa: E402
from gateway.looplag import from_metrics  # noqa: E402

PING_S = 15.0  # the walls' application ping (heartbeat_s)
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def report(n: int) -> bytes:
    return masked_text(
        json.dumps(
            {
                "type": "report",
                "wall": f"wall-{n:04d}",
                "page": "Overview",
                "transport": "ws",
                "epoch": "0123456789abcdef",
                "topic": f"site/hall-{n % 10}/press-{n % 97}",
                "seq": 100_000 + n,
                "rx": 1764104400.31,
                "data_age_s": 0.8,
                "fps": 59.7,
                "slowest_frame_ms": 21,
                "heap_bytes": 31_457_280,
                "visible": True,
                "reconnects": 1,
                "trouble": None,
            },
            separators=(",", ":"),
        ).encode()
    )


class Walls:
    """N WebSocket connections and their schedule of pings and reports."""

    def __init__(self, port: int, count: int, report_s: float) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.report_s = report_s
        self.reports = [report(n) for n in range(count)]
        self.sent = 0
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(
                (
                    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
                ).encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            assert b" 101 " in head.split(b"\r\n", 1)[0], head[:80]
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.socks.append(s)
        self.ping = masked_text(b'{"type":"ping"}')
        self.subscribe = masked_text(b'{"type":"subscribe","id":"w","filters":["nothing/#"]}')
        for s in self.socks:
            s.send(self.subscribe)

    def warm(self, seconds: float) -> None:
        """One report from every wall, spread over ``seconds``."""
        for i, s in enumerate(self.socks):
            s.send(self.reports[i])
            time.sleep(seconds / len(self.socks))
        self.run(0.5, reporting=False)

    def run(self, seconds: float, reporting: bool) -> None:
        """``seconds`` of pings (and reports if ``reporting``), each connection at its
        own phase, draining whatever the gateway sends."""
        n = len(self.socks)
        start = time.monotonic()
        end = start + seconds
        next_ping = [start + PING_S * i / n for i in range(n)]
        next_report = [start + self.report_s * i / n for i in range(n)]
        while (now := time.monotonic()) < end:
            for i, s in enumerate(self.socks):
                if now >= next_ping[i]:
                    s.send(self.ping)
                    next_ping[i] += PING_S
                if reporting and now >= next_report[i]:
                    s.send(self.reports[i])
                    self.sent += 1
                    next_report[i] += self.report_s
            for key, _ in self.sel.select(timeout=0.01):
                with contextlib.suppress(BlockingIOError):
                    key.fileobj.recv(1 << 16)  # type: ignore[union-attr]

    def close(self) -> None:
        for s in self.socks:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--walls", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0, help="seconds per window")
    ap.add_argument("--rounds", type=int, default=2, help="quiet + reporting window pairs")
    ap.add_argument("--quick", action="store_true", help="10 s windows, one round")
    args = ap.parse_args()
    if args.quick:
        args.window, args.rounds = 10.0, 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    report_s = WallsConfig().report_s  # the default
    admin = free_port()
    env = {"GATEWAY_SERVER_MAX_CONNECTIONS_PER_IP": str(args.walls + 100)}
    with gateway_process("--admin-port", str(admin), env=env, cpu=cpus[0]) as gw:
        walls = Walls(gw.port, args.walls, report_s)
        walls.warm(5.0)  # every wall reports once: all listed, the loop warm
        quiet = reporting = 0.0
        lag_before = from_metrics(_get(admin, "/metrics"))
        for _ in range(args.rounds):
            for is_reporting in (False, True):
                before = proc_cpu(gw.proc.pid)
                walls.run(args.window, is_reporting)
                spent = proc_cpu(gw.proc.pid) - before
                if is_reporting:
                    reporting += spent
                else:
                    quiet += spent
        sent_in_windows = walls.sent
        lag = from_metrics(_get(admin, "/metrics")).minus(lag_before).summary()
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/walls", timeout=10) as r:
            listed = len(json.loads(r.read())["walls"])
        list_s = time.perf_counter() - t0
        walls.close()
    total = args.window * args.rounds
    share = max(0.0, reporting - quiet) / total
    result = {
        "walls": args.walls,
        "report_s": report_s,
        "window_s": args.window,
        "rounds": args.rounds,
        "gateway_cpu_quiet_s": round(quiet, 3),
        "gateway_cpu_reporting_s": round(reporting, 3),
        "reports_share_of_a_core": round(share, 5),
        "us_per_report": round(1e6 * max(0.0, reporting - quiet) / max(1, sent_in_windows), 1),
        "reports_sent": sent_in_windows,
        "listed": listed,
        "event_loop_lag": lag,
        "api_walls_seconds": round(list_s, 4),
        "loadavg": os.getloadavg(),
        "machine": machine_info(),
    }
    out = results_path("walls", args.quick)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"walls: {args.walls} walls reporting every {report_s:g} s cost the gateway "
        f"{100 * share:.2f}% of a core ({result['us_per_report']} us per report; "
        f"quiet {quiet:.2f} s vs reporting {reporting:.2f} s CPU over {total:g} s each); "
        f"GET /api/walls with {listed} walls: {1000 * list_s:.0f} ms; "
        f"event-loop lag p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms; "
        f"load average {os.getloadavg()[0]:.2f} -> {out.relative_to(ROOT)}"
    )


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        text: str = r.read().decode()
        return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
