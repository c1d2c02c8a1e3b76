"""Stalls in the hub (issue 14): what one connection's subscribes and a wave of joining
screens cost the event loop of a gateway running as its own process.

Scenarios (each against a fresh gateway with its embedded simulator):

* ``subscribes``: 20,000 topics; one connection sends 32 ``subscribe`` messages with
  32 distinct rates (each with the filters ``#`` and ``+/lineN/#``) while another
  client pings every 20 ms. Reports the ping round trips, the gateway's loop lag (from
  /metrics) and its RSS before and after (chart history off in this one, so that RSS
  tells what the subscribes cost).
* ``joinwave``: 10,000 devices at 1 Hz; N screens (2,000; ``--quick``: 300) connect
  at once and subscribe to ``#``. Reports the loop lag during the wave and the time
  until every screen holds a snapshot of every topic.
* ``heavyapi`` (only with ``--only heavyapi``): 2,000 devices at 1 Hz with chart
  history; after 20 s of history, eight keep-alive clients pipeline
  ``/api/history?filter=%23&limit=100`` five at a time for 10 s (an outside check's
  attack). Reports the answers and the loop lag meanwhile.
* ``churn`` (only with ``--only churn``): 10,000 devices at 1 Hz; ten connections
  (one of them never reads) subscribe to ``#`` and unsubscribe, ten times a second
  each, for 10 s (an outside check's attack). Reports the loop lag meanwhile.
* ``ackflood`` (only with ``--only ackflood``): 3,100 devices, a rule that puts every
  humidity reading in alarm (over 1,000 alarms); twenty connections send ``ack_alarm``
  messages naming 1,000 alarms each, the next as soon as the last is answered, for
  10 s (an outside check's attack). Reports the answers and the loop lag meanwhile.

Every scenario's ``loop_lag`` has the lag's p50/p99/max and samples over 5 and 10 ms,
and under ``running`` the same for its running part (what of each lateness the loop's
thread can have spent on the CPU: ``gateway_event_loop_lag_running_seconds``,
gateway/looplag.py); ``machine`` has each CPU's steal, softirq and idle time over the
scenario (``/proc/stat``): steal is time the hypervisor ran other machines instead.

    python bench/hub_stalls_bench.py [--quick] [--pin] [--probe] [--root DIR] [--json OUT]

``--root`` runs the gateway from another checkout (for before/after figures).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway.looplag import BUCKETS, from_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
SNAPSHOT = b'"type":"snapshot"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


NO_HISTORY = "[history]\nenabled = false\n"


@contextlib.contextmanager
def gateway(
    root: pathlib.Path,
    devices: int,
    rate_hz: float,
    extra: str = "",
    probe: str = "",
    pin: bool = False,
) -> Iterator[tuple[int, int, int]]:
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp, open(pathlib.Path(tmp) / "gateway.log", "w") as log:
        cfg = pathlib.Path(tmp) / "gateway.toml"
        cfg.write_text(
            "[server]\nmax_connections = 20000\nmax_connections_per_ip = 20000\n"
            f"[simulator]\ndevices = {devices}\nrate_hz = {rate_hz}\nsites = 4\nlines = 4\n" + extra
        )
        # the gateway's output goes to a file, never to a pipe nobody reads
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(cfg)]
        if probe:  # perf_probe's instruments: GC pauses, slow steps, late samples
            cmd[1:4] = [str(ROOT / "bench" / "perf_probe.py"), "--as-gateway", probe, "run"]
        cmd += ["--port", str(port), "--admin-port", str(admin)]
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=log)
        if pin:  # the gateway on CPU 0, this process (the clients) on CPU 1 (main)
            os.sched_setaffinity(proc.pid, {0})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    text = scrape(admin)
                    if metric(text, "gateway_topics") >= devices:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the gateway did not come up with its topics")
                time.sleep(0.2)
            yield port, admin, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def masked(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + struct.pack("!H", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Conn:
    """A raw WebSocket client: enough to send JSON and to read the frames."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int) -> Conn:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await sock.send(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade"
            f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self = cls(sock)
        while b"\r\n\r\n" not in self.buf:
            data = await sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            self.buf += data
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        self.buf = bytearray(rest)
        return self

    async def send(self, obj: object) -> None:
        await self.sock.send(masked(orjson.dumps(obj)))

    async def frame(self) -> bytes:
        while True:
            buf = self.buf
            if len(buf) >= 2:
                n, off = buf[1] & 0x7F, 2
                if n == 126 and len(buf) >= 4:
                    n, off = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, off = struct.unpack("!Q", buf[2:10])[0], 10
                if (n < 126 or off > 2) and len(buf) >= off + n:
                    payload = bytes(buf[off : off + n])
                    del buf[: off + n]
                    return payload
            data = await self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            buf += data


async def ping_loop(port: int, rtts: list[float], stop: trio.Event) -> None:
    conn = await Conn.open(port)
    await conn.frame()  # welcome
    n = 0
    while not stop.is_set():
        n += 1
        sent = time.perf_counter()
        await conn.send({"type": "ping", "id": n})
        while not (await conn.frame()).startswith(b'{"type":"pong"'):
            pass
        rtts.append(time.perf_counter() - sent)
        await trio.sleep(0.02)
    conn.sock.close()


RUNNING = "gateway_event_loop_lag_running_seconds"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[str, list[int]]:
    """/proc/stat's per-CPU times (user nice system idle iowait irq softirq steal)."""
    out = {}
    for line in pathlib.Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[name] = [int(x) for x in fields[:8]]
    return out


def machine_summary(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, Any]:
    """Per CPU over the window: the time the hypervisor ran other machines instead
    (steal) and the kernel's interrupt work (softirq: on loopback, the receiving
    side's network processing runs on the sender's CPU), in ms (10 ms ticks)."""
    out = {}
    for cpu, b in before.items():
        a = after.get(cpu, b)
        out[cpu] = {
            "steal_ms": (a[7] - b[7]) * 1000 // CLK_TCK,
            "softirq_ms": (a[6] - b[6]) * 1000 // CLK_TCK,
            "idle_ms": (a[3] - b[3]) * 1000 // CLK_TCK,
        }
    return out


def lag_summary(before: str, after: str) -> dict[str, Any]:
    """The window's loop lag (p50/p99/max, samples over 5 and 10 ms) and, under
    ``running``, the same for its running part: what of each lateness the loop's thread
    can have spent on the CPU; for the rest it was off the CPU (looplag.py)."""

    def summary(name: str, max_gauge: str) -> dict[str, Any]:
        window = from_metrics(after, name).minus(from_metrics(before, name))
        # beyond the last bucket (10 s) the bound is unknown: null, not Infinity
        out: dict[str, Any] = {k: None if v == math.inf else v for k, v in window.summary().items()}
        # the buckets are coarse (10, then 25 ms): a p99 of 25 ms may be 1 % and one sample
        for ms in (5, 10):
            out[f"over_{ms}ms"] = sum(window.counts[BUCKETS.index(ms / 1000) + 1 :])
        out["max_last_minute_ms"] = round(metric(after, max_gauge) * 1000, 1)
        return out

    out = summary("gateway_event_loop_lag_seconds", "gateway_event_loop_lag_max_seconds")
    if RUNNING in after:  # a gateway from before the running part: the lag alone
        running = summary(RUNNING, "gateway_event_loop_lag_running_max_seconds")
        out["running"] = {k: v for k, v in running.items() if k != "samples"}
    return out


def q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else float("nan")


async def subscribes(port: int, admin: int, pid: int, settle_s: float) -> dict[str, Any]:
    before = scrape(admin)
    rss0 = rss_mb(pid)
    rtts: list[float] = []
    stop = trio.Event()
    replies: dict[str, int] = {}
    snapshots = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping_loop, port, rtts, stop)
        await trio.sleep(0.5)
        screen = await Conn.open(port)
        await screen.frame()  # welcome
        t0 = time.perf_counter()
        for i in range(32):
            filters = ["#", f"+/line{i % 4 + 1}/#"]
            rate = round(20 - i * 0.6, 2)
            await screen.send(
                {"type": "subscribe", "id": f"s{i}", "filters": filters, "rate_hz": rate}
            )
        answered_at = None
        quiet_until = None
        with trio.move_on_after(120):
            while True:
                with trio.move_on_after(max(0.05, (quiet_until or 1e18) - time.perf_counter())):
                    frame = await screen.frame()
                    if frame.startswith(b'{"type":"ack"') or frame.startswith(b'{"type":"error"'):
                        kind = orjson.loads(frame).get("code", "ack")
                        replies[kind] = replies.get(kind, 0) + 1
                        if sum(replies.values()) == 32:
                            answered_at = time.perf_counter() - t0
                            quiet_until = time.perf_counter() + settle_s
                    snapshots += frame.count(SNAPSHOT)
                if quiet_until is not None and time.perf_counter() >= quiet_until:
                    break
        stop.set()
        screen.sock.close()
    after = scrape(admin)
    return {
        "replies": replies,
        "all_answered_s": None if answered_at is None else round(answered_at, 3),
        "snapshot_items_received": snapshots,
        "ping_rtt_ms": {
            "count": len(rtts),
            "p99": round(q(rtts, 0.99) * 1000, 2),
            "max": round(max(rtts, default=float("nan")) * 1000, 2),
        },
        "loop_lag": lag_summary(before, after),
        "rss_mb": {"before": round(rss0, 1), "after": round(rss_mb(pid), 1)},
    }


async def joinwave(port: int, admin: int, pid: int, screens: int, topics: int) -> dict[str, Any]:
    before = scrape(admin)
    rss0 = rss_mb(pid)
    done_at: list[float] = []
    failed = 0
    t0 = time.perf_counter()

    async def screen() -> None:
        nonlocal failed
        try:
            conn = await Conn.open(port)
            await conn.send({"type": "subscribe", "id": "s", "filters": ["#"]})
            seen = 0
            tail = b""
            keep = len(SNAPSHOT) - 1
            # a buffer of its own, read into again and again, and counted in place: a
            # new bytes object a read, copied again to count across reads, made the
            # load generator, not the gateway, set the wave's pace (7 to 14 s, now
            # 3.5 s); one buffer for all would not do: a read returns after a yield
            buf = bytearray(64 << 10)
            while seen < topics:
                n = await conn.sock.recv_into(buf)
                if not n:
                    raise ConnectionError("closed")
                # a marker split across two reads is counted once, in the boundary
                boundary = tail + bytes(buf[: min(n, keep)])
                seen += boundary.count(SNAPSHOT) + buf.count(SNAPSHOT, 0, n)
                tail = bytes(buf[n - keep : n]) if n >= keep else boundary[-keep:]
            done_at.append(time.perf_counter() - t0)
            conn.sock.close()
        except OSError:
            failed += 1

    with trio.move_on_after(180):
        async with trio.open_nursery() as nursery:
            for _ in range(screens):
                nursery.start_soon(screen)
    after = scrape(admin)
    return {
        "screens": screens,
        "topics": topics,
        "holding_snapshot": len(done_at),
        "failed": failed,
        "all_hold_snapshot_s": round(max(done_at), 3) if len(done_at) == screens else None,
        "p50_hold_s": round(q(done_at, 0.5), 3),
        "loop_lag": lag_summary(before, after),
        "rss_mb": {"before": round(rss0, 1), "after": round(rss_mb(pid), 1)},
    }


async def heavyapi(port: int, admin: int, seconds: float) -> dict[str, Any]:
    request = b"GET /api/history?filter=%23&limit=100 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 5
    status = b"HTTP/1.1 200"
    answered = [0]
    body = [0]

    async def client() -> None:
        sock = trio.socket.socket()
        with sock:
            await sock.connect(("127.0.0.1", port))
            while True:
                await sock.send(request)
                seen, tail = 0, b""
                while seen < 5 or not tail.endswith(b"}"):
                    chunk = await sock.recv(1 << 20)
                    if not chunk:
                        raise ConnectionError("closed")
                    body[0] += len(chunk)
                    both = tail + chunk
                    found = both.count(status) - tail.count(status)
                    seen += found
                    answered[0] += found
                    tail = both[-len(status) :]

    before = scrape(admin)
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(client)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    after = scrape(admin)
    return {
        "answers": answered[0],
        "mb_received": round(body[0] / 1e6, 1),
        "seconds": seconds,
        "loop_lag": lag_summary(before, after),
    }


async def churn(port: int, admin: int, seconds: float) -> dict[str, Any]:
    acks = [0]

    async def one(reading: bool) -> None:
        conn = await Conn.open(port)
        await conn.frame()  # welcome

        async def read() -> None:
            while True:
                frame = await conn.frame()
                acks[0] += frame.startswith(b'{"type":"ack"')

        async with trio.open_nursery() as nursery:
            if reading:
                nursery.start_soon(read)
            while True:
                await conn.send({"type": "subscribe", "id": "c", "filters": ["#"]})
                await trio.sleep(0.05)
                await conn.send({"type": "unsubscribe", "id": "c"})
                await trio.sleep(0.05)

    before = scrape(admin)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for k in range(10):
                nursery.start_soon(one, k > 0)
    after = scrape(admin)
    return {"acks_read": acks[0], "seconds": seconds, "loop_lag": lag_summary(before, after)}


ACK_RULE = """
[[alarms.rules]]
name = "humid"
filter = "#"
condition = "high"
field = "humidity"
threshold = 1.0
"""


def alarm_names(port: int, most: int) -> list[str]:
    listing = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/alarms", timeout=10)
    alarms = orjson.loads(listing.read())["alarms"]
    return [f"$alarms/{a['rule']}/{a['topic']}" for a in alarms][:most]


async def ackflood(port: int, admin: int, names: list[str], seconds: float) -> dict[str, Any]:
    answers: dict[str, int] = {}

    async def client(k: int) -> None:
        conn = await Conn.open(port)
        last = await conn.frame()  # welcome
        n = 0
        while True:
            n += 1
            await conn.send({"type": "ack_alarm", "id": f"c{k}-{n}", "alarms": names})
            while True:
                try:
                    frame = await conn.frame()
                except ConnectionError:
                    print("closed after", repr(last[:80]), file=sys.stderr)
                    raise
                last = frame
                if frame.startswith(b'{"type":"ack"') or frame.startswith(b'{"type":"error"'):
                    kind = orjson.loads(frame).get("code", "ack")
                    answers[kind] = answers.get(kind, 0) + 1
                    break

    before = scrape(admin)
    async with trio.open_nursery() as nursery:
        for k in range(20):
            nursery.start_soon(client, k)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    after = scrape(admin)
    return {
        "alarms_named": len(names),
        "answers": answers,
        "seconds": seconds,
        "loop_lag": lag_summary(before, after),
    }


@contextlib.contextmanager
def probed(on: bool) -> Iterator[tuple[str, Any]]:
    """The path for perf_probe's records ("" when off), and a function adding their
    summary over a window to a scenario's results once the gateway has exited."""
    if not on:
        yield "", lambda result, t0, t1: None
        return
    from bench.perf_probe import batches_summary, gc_summary, late_summary, steps_summary

    with tempfile.TemporaryDirectory(prefix="stalls-") as tmp:
        gc_log = pathlib.Path(tmp) / "gc.json"

        def report(result: dict[str, Any], t0: float, t1: float) -> None:
            steps = pathlib.Path(str(gc_log) + ".steps")
            result["probe"] = {
                "gc": gc_summary(gc_log, t0, t1),
                "slow_steps": steps_summary(steps, t0, t1),
                "slow_batches": batches_summary(pathlib.Path(str(steps) + ".batches"), t0, t1),
                "late_samples": late_summary(pathlib.Path(str(steps) + ".late"), t0, t1),
            }

        yield str(gc_log), report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 screens in the join wave")
    ap.add_argument("--root", default=str(ROOT), help="the checkout to run the gateway from")
    ap.add_argument("--screens", type=int, default=None)
    ap.add_argument(
        "--rate", type=float, default=1.0, help="device rate (Hz) in the join wave (default 1)"
    )
    ap.add_argument(
        "--only", choices=["subscribes", "joinwave", "heavyapi", "ackflood", "churn"], default=None
    )
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="the gateway on CPU 0, the clients (this process) on CPU 1: on a 2-core "
        "machine the clients otherwise take the gateway's core at times",
    )
    ap.add_argument(
        "--probe",
        action="store_true",
        help="run the gateway under perf_probe's instruments and report, per scenario, "
        "its GC pauses, task steps over 5 ms and what ran during each loop-lag sample over "
        "10 ms (the instruments cost time per step: a diagnosis, not the figures)",
    )
    args = ap.parse_args()
    pin = args.pin and len(os.sched_getaffinity(0)) >= 2
    if args.pin and not pin:
        print("--pin: fewer than 2 CPUs here, not pinned", file=sys.stderr)
    elif pin:
        os.sched_setaffinity(0, {1})
    root = pathlib.Path(args.root)
    screens = args.screens or (300 if args.quick else 2000)
    out: dict[str, Any] = {"root": str(root), "device_rate_hz": args.rate}

    def scenario(
        name: str,
        devices: int,
        rate: float,
        extra: str,
        settle_s: float,
        body: Callable[[int, int, int], dict[str, Any]],
    ) -> None:
        """A fresh gateway, ``settle_s`` for its fleet, then ``body(port, admin, pid)``."""
        with probed(args.probe) as (probe, report):
            with gateway(root, devices, rate, extra, probe, pin) as (port, admin, pid):
                time.sleep(settle_s)
                t0, ticks = time.monotonic(), cpu_ticks()
                out[name] = body(port, admin, pid)
                t1 = time.monotonic()
                out[name]["machine"] = machine_summary(ticks, cpu_ticks())
            report(out[name], t0, t1)  # the gateway has exited: its records are in
        print(json.dumps({name: out[name]}), flush=True)

    if args.only in (None, "subscribes"):
        # without chart history: its buffers are made as the fleet's series appear and
        # take RSS up by ~200 MB in the first seconds, which would hide what the
        # subscribes cost
        settle = 2.0 if args.quick else 5.0
        scenario(
            "subscribes",
            20_000,
            0.2,
            NO_HISTORY,
            0.0,
            lambda port, admin, pid: trio.run(subscribes, port, admin, pid, settle),
        )
    if args.only in (None, "joinwave"):
        # 2 s: let the fleet reach its steady rate
        scenario(
            "joinwave",
            10_000,
            args.rate,
            "",
            2.0,
            lambda port, admin, pid: trio.run(joinwave, port, admin, pid, screens, 10_000),
        )
    if args.only == "heavyapi":  # 20 s: some history per topic
        scenario(
            "heavyapi",
            2_000,
            1.0,
            "",
            20.0,
            lambda port, admin, pid: trio.run(heavyapi, port, admin, 10.0),
        )
    if args.only == "churn":
        scenario(
            "churn",
            10_000,
            1.0,
            "",
            2.0,
            lambda port, admin, pid: trio.run(churn, port, admin, 10.0),
        )
    if args.only == "ackflood":  # 5 s: the alarms raised
        scenario(
            "ackflood",
            3_100,
            1.0,
            ACK_RULE,
            5.0,
            lambda port, admin, pid: trio.run(ackflood, port, admin, alarm_names(port, 1000), 10.0),
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
