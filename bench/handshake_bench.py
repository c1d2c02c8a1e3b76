"""What a reconnecting screen costs the gateway: CPU per accepted WebSocket (TCP
accept, HTTP upgrade, welcome), with and without permessage-deflate, and the start-up
of a gateway process (Python, imports, until it listens).

The gateway runs pinned to CPU 0 with no data source; the screens connect from this
process on CPU 1, in rounds of ``--batch`` at once (a reconnect storm's shape), wait
for their welcome and stay connected until the round's CPU is read. The gateway's CPU
comes from /proc (user + system), so other work on the machine inflates it less than
wall time, but it still does: report it with the load average.

    python bench/handshake_bench.py [--screens 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e_bench import proc_cpu  # noqa: E402
from bench.report import gateway_process  # noqa: E402

DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def connect_round(port: int, screens: int, batch: int, deflate: bool) -> list[socket.socket]:
    """``screens`` WebSocket connections, ``batch`` at a time, each until its welcome."""
    held: list[socket.socket] = []
    extra = DEFLATE if deflate else ""
    for start in range(0, screens, batch):
        group = []
        for _ in range(min(batch, screens - start)):
            s = socket.create_connection(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{extra}"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            group.append(s)
        for s in group:
            buf = b""
            # the 101 head, then the welcome frame's first bytes (deflated or not)
            while len(buf.partition(b"\r\n\r\n")[2]) < 64:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the gateway closed a connection during the round")
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 101 "), buf[:40]
            assert (b"permessage-deflate" in buf.split(b"\r\n\r\n")[0].lower()) == deflate
        held += group
    return held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--screens", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    starts = []
    for _ in range(args.rounds):  # a bare start: Python, imports, listening
        began = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "gateway", "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        help_s = time.monotonic() - began
        imports = sum(
            int(line.split("|")[1])
            for line in out.stderr.splitlines()
            if line.count("|") == 2
            and line.split("|")[1].strip().isdigit()
            and not line.split("|")[2].startswith("  ")
        )
        starts.append((help_s, imports / 1e6))
    results: dict[str, list[float]] = {"plain": [], "deflate": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = pathlib.Path(tmp) / "gateway.toml"
        cfg.write_text("[server]\nmax_connections = 20000\nmax_connections_per_ip = 20000\n")
        began = time.monotonic()
        with gateway_process("--config", str(cfg), "--status-interval", "0", cpu=0) as gw:
            listening_s = time.monotonic() - began
            start_cpu = proc_cpu(gw.proc.pid)
            time.sleep(1.0)
            for _ in range(args.rounds):
                for kind in ("plain", "deflate"):
                    before = proc_cpu(gw.proc.pid)
                    held = connect_round(gw.port, args.screens, args.batch, kind == "deflate")
                    results[kind].append((proc_cpu(gw.proc.pid) - before) / args.screens * 1e6)
                    for s in held:
                        s.close()
                    time.sleep(1.5)  # the gateway sees them go before the next round
    load = os.getloadavg()[0]
    best = min(starts)
    print(f"machine load (1 min): {load:.1f}; every figure is an upper bound")
    print(
        f"`gateway --help` (Python + the CLI's imports): {best[0]:.2f} s wall, "
        f"imports {best[1]:.2f} s (-X importtime, top level)"
    )
    print(
        f"`gateway run` with no data source: listening {listening_s:.2f} s after the "
        f"process was started, {start_cpu:.2f} s CPU"
    )
    for kind, values in results.items():
        print(
            f"CPU per accepted WebSocket ({kind}: accept, upgrade, welcome): "
            f"{min(values):.0f} µs (rounds: {', '.join(f'{v:.0f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
