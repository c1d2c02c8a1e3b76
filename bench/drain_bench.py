"""Drains of many sockets at once: the task steps and scheduler batches they cost.

N loopback sockets each get ``--bytes`` to write (the kernel takes part at once, the
rest goes out through the gateway's drain, ``gateway/serve/sockio.py``, each write in
turn, ``gateway/serve/turns.py``); another process, pinned to CPU 1, reads them all as
fast as it can. Reported: the time until every byte is read, the drain tasks' steps,
the scheduler batches (and how many ran over 5 and 10 ms), and the drains that waited
their turn. The first batch holds every socket's first write (each of ``--bytes``):
the gateway's pump bounds that one (fanout.py), this bench does not.

    python bench/drain_bench.py [--root DIR] [--sockets 1000] [--bytes 3000000]
                                [--sndbuf 1048576] [--rcvbuf 131072]

``--root`` runs another checkout's drain (for before/after figures in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

READER = r"""
import os, selectors, socket, sys
if len(os.sched_getaffinity(0)) > 1 and os.cpu_count() > 1:
    os.sched_setaffinity(0, {1})
port, n, size, rcvbuf = (int(x) for x in sys.argv[1:5])
sel = selectors.DefaultSelector()
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, [0])
print("ok", flush=True)
left = n
while left:
    for key, _ in sel.select(timeout=60):
        try:
            got = len(key.fileobj.recv(1 << 20, socket.MSG_TRUNC))
        except BlockingIOError:
            continue
        key.data[0] += got
        if key.data[0] >= size or not got:
            sel.unregister(key.fileobj)
            left -= 1
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="the checkout whose drain to run")
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--bytes", type=int, default=3_000_000, help="to write per socket")
    ap.add_argument("--sndbuf", type=int, default=1 << 20, help="SO_SNDBUF of the writers")
    ap.add_argument("--rcvbuf", type=int, default=128 << 10, help="SO_RCVBUF of the readers")
    args = ap.parse_args()
    if args.root:
        sys.path.insert(0, args.root)
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import trio

    from gateway.serve.sockio import Outbound
    from gateway.serve.turns import Turns

    class Counter:
        bytes_sent = 0

    class Probe(trio.abc.Instrument):
        def __init__(self) -> None:
            self.steps = 0
            self.batches: list[float] = []
            self.started: float | None = None

        def after_io_wait(self, timeout: float) -> None:
            self.started = time.perf_counter()

        def before_io_wait(self, timeout: float) -> None:
            if self.started is not None:
                self.batches.append(time.perf_counter() - self.started)

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("drain_one"):
                self.steps += 1

    async def run(conns: list[socket.socket]) -> dict[str, float]:
        payload = b"x" * args.bytes
        turns, probe, counter = Turns(), Probe(), Counter()
        trio.lowlevel.add_instrument(turns)
        trio.lowlevel.add_instrument(probe)

        async def drain_one(sock: socket.socket) -> None:
            out = Outbound(sock, counter)
            if not out.send([payload]):
                await out.drain(turn=turns.wait)

        async with trio.open_nursery() as outer:
            outer.start_soon(turns.run)
            async with trio.open_nursery() as nursery:
                for c in conns:
                    nursery.start_soon(drain_one, c)
            outer.cancel_scope.cancel()
        trio.lowlevel.remove_instrument(probe)
        b = probe.batches
        return {
            "drain_steps": probe.steps,
            "batches": len(b),
            "batches_over_5ms": sum(1 for x in b if x > 0.005),
            "batches_over_10ms": sum(1 for x in b if x > 0.010),
            "waited_turn": turns.waited,
        }

    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.sockets + 16)
    port = listener.getsockname()[1]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(port), str(args.sockets), str(args.bytes),
         str(args.rcvbuf)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    conns: list[socket.socket] = []
    try:
        conns += [listener.accept()[0] for _ in range(args.sockets)]
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ok"
        for c in conns:
            c.setblocking(False)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
        t0 = time.perf_counter()
        result = trio.run(run, conns)
        reader.wait(timeout=60)  # every byte read
        result = {"seconds": round(time.perf_counter() - t0, 3), **result}
    finally:
        if reader.poll() is None:
            reader.kill()
        for c in [listener, *conns]:
            c.close()
    print(json.dumps({**vars(args), "root": args.root or ".", **result}))


if __name__ == "__main__":
    main()
