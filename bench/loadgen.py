"""Load generator: many WebSocket subscribers in one process, cheap enough not to be
the bottleneck (non-blocking sockets and epoll; frames are counted, not parsed).

    python bench/loadgen.py --port P --clients N [--filter F] [--rate HZ] [--duration S]

Prints one JSON line at the end: connections made, bytes received, its own CPU.
Used by bench/fanout_bench.py against our gateway and against the peer servers
(which ignore the subscribe message).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time


def masked_text(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + struct.pack("!H", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--filter", default="#")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    sel = selectors.DefaultSelector()
    sub = masked_text(
        json.dumps(
            {"type": "subscribe", "id": "b", "filters": [args.filter], "rate_hz": args.rate}
        ).encode()
    )
    pending = {}
    for i in range(args.clients):
        s = socket.create_connection(("127.0.0.1", args.port))
        s.setblocking(False)
        key = base64.b64encode(os.urandom(16)).decode()
        s.send(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ, i)
        if i % 500 == 499:
            print(f"loadgen: {i + 1} connections opened", file=sys.stderr, flush=True)
    open_ = set()
    peak = 0
    received = 0
    start_cpu = cpu()
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline and (pending or open_):
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                pending.pop(s, None)
                open_.discard(s)
                continue
            received += len(data)
            if s in pending:
                buf = pending[s] + data
                if b"\r\n\r\n" in buf:
                    head = buf.split(b"\r\n\r\n", 1)[0]
                    del pending[s]
                    if b" 101 " in head.split(b"\r\n", 1)[0]:
                        open_.add(s)
                        peak = max(peak, len(open_))
                        s.send(sub)
                    else:
                        sel.unregister(s)
                        s.close()
                else:
                    pending[s] = buf
    print(
        json.dumps({"connected": peak, "bytes": received, "cpu_s": cpu() - start_cpu}), flush=True
    )


if __name__ == "__main__":
    main()
