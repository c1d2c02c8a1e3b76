"""Where one gateway core goes: a join wave, a steady big-screen load, a large fleet.

A profiling aid for the per-frame and per-join work (not a benchmark of record: that is
bench/e2e_bench.py). It runs the gateway as its own process (with the embedded
simulator, or through mosquitto with ``--mqtt``), records every cyclic-GC collection
inside it (``gc.callbacks``: generation, pause, objects collected), and drives screens
from one other process on raw non-blocking sockets with permessage-deflate, as a browser
would. Reported for the measured window: gateway CPU (cores) and CPU per frame handed to
a screen, loop lag and its running part (from /metrics), GC pauses per generation, the
task steps that held the loop over 5 ms (a Trio instrument: task, where it stopped, wall
and CPU time), RSS, the load generator's own CPU (screens and fleet share CPU 1: near
one core, the screens read late and the run measured the load generator, not the
gateway), the gateway's own side of the data age (device timestamp, and its receipt, to
frame written: its histograms on /metrics), and for the sampled screens (one in
``--sample-every``, which inflate and parse every message) the time until each holds a
snapshot of every topic of its filter and the data age of the values received (receipt
time minus the device timestamp; one value in ``AGE_STEP``). The other screens read and
discard (``MSG_TRUNC``: no copy), so the load generator's core goes to reading, not to
Python work per value.

    python bench/perf_probe.py joinwave --devices 10000 --screens 2000
    python bench/perf_probe.py steady --devices 10000 --screens 4000 --seconds 20
    python bench/perf_probe.py steady --devices 50000 --screens 500 --mqtt

``joinwave``: the screens connect all at once (half on ``#``, half on one site) into
a gateway whose fleet is running, and the window covers the wave. ``steady``: they
connect first, the window starts ``--warmup`` seconds later. ``--py-spy FILE``
records a py-spy profile of the gateway over the window (py-spy must be installed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pathlib
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SITE = "berlin"
SNAPSHOT = b'"type":"snapshot"'
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the gateway, with its collections recorded ------------------------------------------


def as_gateway(gc_log: str, argv: list[str]) -> int:
    """Run ``gateway`` with every GC collection recorded into ``gc_log`` at exit."""
    import atexit
    import gc

    records: list[tuple[float, int, float, int, float]] = []
    started = [0.0, 0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        # the pause in CPU time (what the collection costs, whatever the machine's
        # load) and in wall time (what the loop saw, preemption included)
        now, cpu = time.monotonic(), time.thread_time()
        if phase == "start":
            started[:] = now, cpu
        else:
            at, cpu0 = started
            records.append((at, info["generation"], cpu - cpu0, info["collected"], now - at))

    gc.callbacks.append(on_gc)

    def dump() -> None:
        pathlib.Path(gc_log).write_text(json.dumps(records))

    atexit.register(dump)
    import trio

    if os.environ.get("PROBE_STEPS") == "0":  # --bare: no step instrument
        from gateway.__main__ import main

        return main(argv)
    steps = _slow_steps(gc_log + ".steps")
    run = trio.run

    def instrumented(*a: Any, **kw: Any) -> Any:
        kw["instruments"] = [*kw.get("instruments", ()), steps]
        return run(*a, **kw)

    trio.run = instrumented  # type: ignore[assignment]
    from gateway.__main__ import main

    return main(argv)


def _slow_steps(path: str) -> Any:
    """A Trio instrument keeping every task step over SLOW_STEP_S: the task, where it
    was resumed and where it stopped, its wall and CPU time (written at exit)."""
    import atexit

    import trio

    kept: list[tuple[float, str, float, float, str]] = []
    SLOW = 0.005

    def stack(task: Any) -> str:
        # the innermost frames of the task's await chain
        out = []
        coro = task.coro
        while coro is not None and len(out) < 12:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            out.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        return " > ".join(out[-4:])

    # PROBE_SAMPLE_MS=N: a thread samples the main thread's stack every N ms and a
    # slow step keeps its samples' innermost gateway frames (what held the loop);
    # it takes the GIL to sample, so it perturbs the run: a diagnosis, not a figure
    import collections
    import sys
    import threading

    samples: collections.deque[tuple[float, str]] = collections.deque(maxlen=400)
    sample_ms = float(os.environ.get("PROBE_SAMPLE_MS", "0"))
    main_id = threading.get_ident()

    def sampler() -> None:
        while True:
            time.sleep(sample_ms / 1000)
            frame = sys._current_frames().get(main_id)
            where = []
            while frame is not None and len(where) < 3:
                name = frame.f_code.co_filename
                if "/gateway/" in name or "/devices_sim/" in name:
                    where.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
                frame = frame.f_back
            samples.append((time.perf_counter(), " < ".join(where)))

    if sample_ms:
        threading.Thread(target=sampler, daemon=True).start()

    # PROBE_KSTATE_MS=N: a thread reads the loop thread's scheduler state and, when it
    # is not running, the kernel function it waits in (/proc/.../stat and wchan) every
    # N ms; a late sample then says where the thread was while it did not run (the
    # reads take the GIL only while the loop thread has let it go: in a system call)
    kstates: collections.deque[tuple[float, str]] = collections.deque(maxlen=2000)
    kstate_ms = float(os.environ.get("PROBE_KSTATE_MS", "0"))
    task_dir = f"/proc/self/task/{threading.get_native_id()}"

    def kstate() -> None:
        while True:
            time.sleep(kstate_ms / 1000)
            try:
                with open(task_dir + "/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state != "R":
                    with open(task_dir + "/wchan") as f:
                        state += " " + (f.read().strip() or "?")
            except OSError:
                continue
            kstates.append((time.monotonic(), state))

    if kstate_ms:
        threading.Thread(target=kstate, daemon=True).start()

    def sampled(t0: float) -> str:
        counts = collections.Counter(w for t, w in list(samples) if t >= t0)
        return "; ".join(f"{n}x {w}" for w, n in counts.most_common(3))

    batches: list[tuple[float, float, dict[str, int]]] = []  # long scheduler batches
    # every step of 0.5 ms or more in the last second (end time, task, wall, CPU), and
    # for every loop-lag sample over 10 ms the wall time of those that ran while the
    # sampler was late, by task (where a late sample's time went)
    recent: collections.deque[tuple[float, str, float, float]] = collections.deque()
    late: list[tuple[float, float, dict[str, list[float]], float]] = []
    cpu_at = [time.thread_time()]

    def on_lag(lag: float) -> None:
        # the loop's thread CPU since the sampler's previous wake-up: the loop does not
        # block while a timer is overdue, so a late sample with less CPU than its lag
        # was not running (preempted by another thread or process, or the hypervisor)
        cpu, cpu_at[0] = time.thread_time() - cpu_at[0], time.thread_time()
        if lag <= 0.010:
            return
        now = time.monotonic()
        since = now - lag - 0.010  # the sampler's due time, and the step it ended
        by: dict[str, list[float]] = {}
        for at, name, wall, step_cpu in recent:
            if at >= since:
                one = by.setdefault(name, [0, 0.0, 0.0])
                one[0] += 1
                one[1] += wall * 1e3
                one[2] += step_cpu * 1e3
        for at, state in list(kstates):
            if at >= since:
                one = by.setdefault(f"(thread: {state})", [0, 0.0, 0.0])
                one[0] += 1
                one[1] += kstate_ms
        late.append((now, lag, by, max(0.0, lag - cpu)))

    class Steps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.t0 = self.c0 = self.io_t0 = 0.0
            self.at = ""
            self.batch_t0 = time.perf_counter()
            self.batch_tasks: dict[str, int] = {}

        def before_io_wait(self, timeout: float) -> None:
            # a batch of ready tasks ended: keep it if it held the loop long
            took = time.perf_counter() - self.batch_t0
            if took > SLOW_BATCH:
                batches.append((time.monotonic(), took, self.batch_tasks))
            self.batch_tasks = {}
            self.io_t0 = time.perf_counter()

        def after_io_wait(self, timeout: float) -> None:
            self.batch_t0 = time.perf_counter()
            waited = self.batch_t0 - self.io_t0
            if waited >= 0.0005:  # the loop blocked in epoll this long (timeout asked)
                now = time.monotonic()
                recent.append((now, "(epoll wait)", waited, timeout))
                while recent[0][0] < now - 1.0:
                    recent.popleft()

        def before_task_step(self, task: Any) -> None:
            self.t0, self.c0 = time.perf_counter(), time.thread_time()

        def after_task_step(self, task: Any) -> None:
            wall = time.perf_counter() - self.t0
            frame = getattr(task.coro, "cr_frame", None)
            line = frame.f_lineno if frame is not None else 0
            if wall > SLOW:
                where = f"from line {last.get(task, '?')}: {stack(task)}"
                if sample_ms:
                    where += " | " + sampled(self.t0)
                kept.append(
                    (time.monotonic(), task.name, wall, time.thread_time() - self.c0, where)
                )
            last[task] = line
            name = task.name.rsplit(".", 1)[-1]
            if wall >= 0.0005:
                now = time.monotonic()
                recent.append((now, name, wall, time.thread_time() - self.c0))
                while recent[0][0] < now - 1.0:
                    recent.popleft()
            self.batch_tasks[name] = self.batch_tasks.get(name, 0) + 1
            if self.t0 - self.batch_t0 > SLOW_BATCH / 2:
                # a long batch: where its steps stopped, and their wall time (ms)
                at = f"{name} @ {stack(task).rsplit(' > ', 2)[0]}"
                self.batch_tasks[at] = self.batch_tasks.get(at, 0) + round(wall * 1e3, 2)

    last: dict[Any, int] = {}  # where each task's outermost coroutine stopped last

    # PROBE_SLOW_BATCH_S: the batches kept (20 ms; a late sample of 12 ms is often
    # one batch of 7 to 13 ms: 0.006 shows them, with their time in the window)
    SLOW_BATCH = float(os.environ.get("PROBE_SLOW_BATCH_S", "0.02"))
    atexit.register(lambda: pathlib.Path(path).write_text(json.dumps(kept)))
    atexit.register(lambda: pathlib.Path(path + ".batches").write_text(json.dumps(batches)))
    atexit.register(lambda: pathlib.Path(path + ".late").write_text(json.dumps(late)))
    from gateway import looplag

    observe = looplag.LoopLag.observe

    def observed(self: Any, lag: float, now: float, ran: float | None = None) -> None:
        on_lag(lag)
        observe(self, lag, now, ran)

    looplag.LoopLag.observe = observed  # type: ignore[method-assign]
    return Steps()


def proc_cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` so far, by thread name and id (the loop
    lag is the main thread's; another thread holding the GIL or the CPU delays it)."""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[f"{name} {task.name}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_steal() -> dict[str, tuple[int, int, int]]:
    """Interrupt, softirq and steal time of each CPU so far, in USER_HZ ticks
    (/proc/stat)."""
    out = {}
    for line in pathlib.Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[name] = (int(fields[5]), int(fields[6]), int(fields[7]))
    return out


def schedstat(pid: int) -> tuple[int, int, int]:
    """ns on the CPU, ns runnable and waiting for it, time slices: the main thread's."""
    run, wait, slices = pathlib.Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(run), int(wait), int(slices)


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        return str(r.read().decode())


OUTBOX = (
    "shared_frames", "shared_catchups", "coalesced_updates", "personal_fragments",
    "lag_snapshots",
)  # fmt: skip


def counter(text: str, outbox_name: str) -> float:
    return metric(text, f"gateway_outbox_{outbox_name}_total")


def hist_window(before: str, after: str, name: str) -> dict[str, float | None]:
    """A latency histogram of /metrics over the window between two scrapes: the bucket
    bounds its p50 and p99 fall under (``histogram_quantile`` of the e2e bench), and
    the share of observations at or under each of 0.1, 0.15 and 0.25 s."""
    from bench.e2e_bench import histogram_quantile, parse_metrics

    m0, m1 = parse_metrics(before), parse_metrics(after)
    total = m1.get(f"{name}_count", 0.0) - m0.get(f"{name}_count", 0.0)
    out: dict[str, float | None] = {"count": total}
    for q in (0.5, 0.99):
        at = histogram_quantile(m0, m1, name, q)
        out[f"p{round(q * 100)}_le_s"] = None if at != at else at  # NaN: no observation
    for bound in (0.1, 0.15, 0.25):
        key = f"{name}_bucket{{le={bound}}}"
        c = m1.get(key, 0.0) - m0.get(key, 0.0)
        out[f"share_le_{bound:g}_s"] = round(c / total, 4) if total and key in m1 else None
    return out


def metric(text: str, name: str) -> float:
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else float("nan")


@contextlib.contextmanager
def gateway(
    devices: int,
    rate: float,
    mqtt_port: int | None,
    tmp: pathlib.Path,
    extra: str,
    steps: bool = True,
) -> Iterator[tuple[int, int, subprocess.Popen[bytes], pathlib.Path]]:
    port, admin = free_port(), free_port()
    cfg = tmp / "gateway.toml"
    source = (
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n'
        if mqtt_port
        else f"[simulator]\ndevices = {devices}\nrate_hz = {rate}\nsites = 4\nlines = 4\n"
    )
    cfg.write_text(
        f"[server]\nmax_connections = 20000\nmax_connections_per_ip = 20000\n{extra}\n{source}"
    )
    gc_log = tmp / "gc.json"
    cmd = [sys.executable, __file__, "--as-gateway", str(gc_log), "run", "--config", str(cfg)]
    cmd += ["--port", str(port), "--admin-port", str(admin)]
    with open(tmp / "gateway.log", "wb") as log:
        env = {**os.environ, "PROBE_STEPS": "1" if steps else "0"}
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                scrape(admin)
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                log_text = (tmp / "gateway.log").read_text()
                raise RuntimeError("the gateway did not start: " + log_text)
            time.sleep(0.2)
        yield port, admin, proc, gc_log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_topics(admin: int, devices: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while metric(scrape(admin), "gateway_topics") < devices:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway did not see the whole fleet")
        time.sleep(0.5)


# -- the screens ---------------------------------------------------------------------------


def masked(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + struct.pack("!H", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


#: a sampled screen takes the data age of one item in this many (the phase rotates)
AGE_STEP = 4


class Screen:
    __slots__ = (
        "age_phase", "buf", "filt", "frames", "held", "holds_at", "sample", "sock", "state",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, filt: str, sample: bool) -> None:
        self.sock, self.filt, self.sample = sock, filt, sample
        self.state = "connecting"
        self.buf = bytearray()
        self.held: set[str] = set()
        self.holds_at: float | None = None
        self.age_phase = 0
        self.frames = 0  # data messages received in the measured window


def as_screens(args: argparse.Namespace) -> None:
    """Connect ``--screens`` screens now, read until ``--until`` (wall clock), print
    one JSON line: per sampled screen the seconds until it held every topic, ages."""
    import orjson

    os.sched_setaffinity(0, {1})
    filters = args.filters.split(",")
    want = {f: int(n) for f, n in (x.split("=") for x in args.want.split(","))}
    sel = selectors.DefaultSelector()
    t0 = time.time()
    screens: list[Screen] = []
    for i in range(args.screens):
        # every filter sampled alike (i % N alone, with N even, sampled only the first)
        sample = i // len(filters) % args.sample_every == 0
        if args.part == ("bulk" if sample else "sampled"):
            continue  # that screen is the other process's
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", args.port))
        sc = Screen(s, filters[i % len(filters)], sample)
        screens.append(sc)
        sel.register(s, selectors.EVENT_WRITE, sc)
    ages: list[float] = []
    failed = 0
    scratch = bytearray(1 << 18)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    ).encode()
    # an app-level ping from every screen every 10 s: the gateway drops a connection
    # that sends nothing for heartbeat_s and then leaves its Ping unanswered (a
    # browser answers it by itself; these screens do not parse what they discard).
    # Without it every screen was dropped 25 s after its subscribe, 4 s before the
    # end of a 20 s window: its frames a second read 8 where the gateway sent 10
    ping = masked(b'{"type":"ping"}')
    next_ping = time.monotonic() + 10
    while time.time() < args.until:
        if time.monotonic() >= next_ping:
            next_ping += 10
            for sc in screens:
                if sc.state == "open":
                    with contextlib.suppress(OSError):
                        sc.sock.send(ping)
        for k, _ in sel.select(timeout=0.2):
            sc = k.data
            if sc.state == "connecting":
                try:
                    sc.sock.send(upgrade)
                except OSError:
                    failed += 1
                    sel.unregister(sc.sock)
                    continue
                sc.state = "handshake"
                sel.modify(sc.sock, selectors.EVENT_READ, sc)
                continue
            if sc.state == "open" and not sc.sample:
                try:  # MSG_TRUNC: TCP discards the bytes without copying them to us
                    n = sc.sock.recv_into(scratch, len(scratch), socket.MSG_TRUNC)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    n = 0
                if not n:
                    sel.unregister(sc.sock)
                    sc.state = "closed"
                continue
            try:
                data = sc.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sc.sock)
                sc.state = "closed"
                failed += sc.holds_at is None
                continue
            sc.buf += data
            if sc.state == "handshake":
                if b"\r\n\r\n" not in sc.buf:
                    continue
                head, _, rest = bytes(sc.buf).partition(b"\r\n\r\n")
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    failed += 1
                    sel.unregister(sc.sock)
                    continue
                sc.buf = bytearray(rest)
                sub = {"type": "subscribe", "id": "s", "filters": [sc.filt], "rate_hz": 10}
                sc.sock.send(masked(orjson.dumps(sub)))
                sc.state = "open"
                if not sc.sample:
                    sc.buf = bytearray()
                    continue
            now = time.time()
            buf, pos = sc.buf, 0
            while len(buf) - pos >= 2:
                n, head = buf[pos + 1] & 0x7F, 2
                if n == 126:
                    if len(buf) - pos < 4:
                        break
                    n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
                elif n == 127:
                    if len(buf) - pos < 10:
                        break
                    n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
                if len(buf) - pos < head + n:
                    break
                payload = bytes(buf[pos + head : pos + head + n])
                if buf[pos] & 0x40:
                    payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                pos += head + n
                if buf[pos - head - n] & 0x0F != 1:
                    continue
                obj = orjson.loads(payload)
                items = obj["items"] if obj.get("type") == "batch" else [obj]
                if now >= args.age_from and sc.holds_at is not None:
                    sc.frames += 1
                if sc.holds_at is not None:
                    # ages from every AGE_STEP-th item: the per-item Python work, not
                    # the parse, is what a sampled screen costs the load generator
                    items = items[sc.age_phase :: AGE_STEP]
                    sc.age_phase = (sc.age_phase + 1) % AGE_STEP
                for item in items:
                    kind = item.get("type")
                    if kind == "snapshot":
                        sc.held.add(item["topic"])
                    elif kind == "delta" and sc.holds_at is not None:
                        ts = item.get("ts")
                        if type(ts) is float and now >= args.age_from:
                            ages.append(now - ts)
                if sc.holds_at is None and len(sc.held) >= want[sc.filt]:
                    sc.holds_at = now - t0
                    sc.held = set()
            del buf[:pos]
    sampled = [s for s in screens if s.sample]
    held = sorted(s.holds_at for s in sampled if s.holds_at is not None)
    ages.sort()

    def q(xs: list[float], p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 4) if xs else None

    usage = os.times()
    print(json.dumps({
        "cpu_cores": round((usage.user + usage.system) / max(1e-9, time.time() - t0), 3),
        "screens": len(screens), "sampled": len(sampled), "failed": failed,
        "sampled_holding": len(held), "hold_p50_s": q(held, 0.5), "hold_max_s": q(held, 1.0),
        "age_samples": len(ages), "age_p50_s": q(ages, 0.5), "age_p99_s": q(ages, 0.99),
        "age_max_s": q(ages, 1.0),
        # messages a second a sampled screen received, per filter (asked: 10)
        "per_second": {
            f: round(sum(s.frames for s in sampled if s.filt == f)
                     / max(1, sum(1 for s in sampled if s.filt == f))
                     / max(1e-9, time.time() - max(t0, args.age_from)), 2)
            for f in filters
        },
    }), flush=True)  # fmt: skip


# -- the scenarios -------------------------------------------------------------------------


def gc_summary(gc_log: pathlib.Path, t0: float, t1: float) -> dict[str, Any]:
    records = json.loads(gc_log.read_text()) if gc_log.exists() else []
    out: dict[str, Any] = {}
    for gen in (0, 1, 2):
        mine = [(d, n, w) for at, g, d, n, w in records if g == gen and t0 <= at <= t1]
        pauses = [d for d, _, _ in mine]
        out[f"gen{gen}"] = {
            "count": len(pauses),
            "collected": sum(n for _, n, _ in mine),
            "cpu_total_ms": round(sum(pauses) * 1000, 1),
            "cpu_max_ms": round(max(pauses, default=0.0) * 1000, 1),
            "wall_max_ms": round(max((w for _, _, w in mine), default=0.0) * 1000, 1),
        }
    return out


def batches_summary(path: pathlib.Path, t0: float, t1: float) -> dict[str, Any]:
    """Scheduler batches (the ready tasks Trio runs between two I/O waits) over 20 ms
    (``PROBE_SLOW_BATCH_S``) in the window: how many, the longest, which tasks they ran
    (a long batch of short steps holds every timer as long as one long step does), and
    when each was."""
    found = json.loads(path.read_text()) if path.exists() else []
    # strictly inside: the screens leave at the end of the window (2,000 teardowns)
    mine = [(took, tasks) for at, took, tasks in found if t0 <= at <= t1]
    tasks: dict[str, int] = {}
    for _, ran in mine:
        for name, n in ran.items():
            tasks[name] = tasks.get(name, 0) + n
    steps = {k: v for k, v in tasks.items() if " @ " not in k}
    where = {k: round(v, 1) for k, v in tasks.items() if " @ " in k}
    return {
        "count": len(mine),
        "max_ms": round(max((t for t, _ in mine), default=0.0) * 1000, 1),
        "task_steps_in_them": dict(sorted(steps.items(), key=lambda kv: -kv[1])[:8]),
        # in their second half: where the steps stopped, and their wall time (ms)
        "late_steps_ms_by_stop": dict(sorted(where.items(), key=lambda kv: -kv[1])[:8]),
        # the first 40: when in the window (s), how long (ms), the steps of each task
        "at": [
            (
                round(at - t0, 3),
                round(took * 1e3, 1),
                {k: n for k, n in ran.items() if "@" not in k},
            )
            for at, took, ran in found
            if t0 <= at <= t1
        ][:40],
    }


def late_summary(path: pathlib.Path, t0: float, t1: float) -> dict[str, Any]:
    """The loop-lag samples over 10 ms in the window, and what ran while each was late:
    per task, in how many of them it ran steps of 0.5 ms or more, and their wall and
    CPU time in all (ms); for the worst sample, per task: steps, wall, CPU; and for each
    sample how long at least the loop did not run at all while it was late."""
    found = json.loads(path.read_text()) if path.exists() else []
    kept = sorted(
        ((lag, off, by) for at, lag, by, off in found if t0 <= at <= t1), key=lambda k: k[0]
    )
    mine = [(lag, by) for lag, _, by in kept]
    tasks: dict[str, list[float]] = {}
    for _, by in mine:
        for name, (n, wall, cpu) in by.items():
            one = tasks.setdefault(name, [0, 0.0, 0.0, 0.0])
            one[0] += 1
            one[1] += n
            one[2] += wall
            one[3] += cpu
    worst = max(mine, key=lambda m: m[0], default=(0.0, {}))
    return {
        "samples": len(mine),
        "lags_ms": sorted(round(lag * 1e3, 1) for lag, _ in mine),
        "worst": {name: [round(x, 1) for x in v] for name, v in worst[1].items()},
        # lag minus the loop's CPU since the sampler's previous wake-up: at least this
        # long the loop was not running at all (ms), per sample, in the order of lags_ms
        "not_running_ms": [round(off * 1e3, 1) for _, off, _ in kept],
        # when each was observed (CLOCK_MONOTONIC: to match records taken outside)
        "at_monotonic": [
            at for at, _, _, _ in sorted(found, key=lambda f: f[1]) if t0 <= at <= t1
        ],
        "tasks": {
            name: {"in_samples": int(v[0]), "steps": int(v[1]), "wall_ms": round(v[2], 1),
                   "cpu_ms": round(v[3], 1)}
            for name, v in sorted(tasks.items(), key=lambda kv: -kv[1][2])
        },
    }  # fmt: skip


def steps_summary(path: pathlib.Path, t0: float, t1: float) -> list[dict[str, Any]]:
    """The task steps over 5 ms in the window, by task and where they stopped: the
    work that held the loop (wall time; CPU time tells work from preemption)."""
    steps = json.loads(path.read_text()) if path.exists() else []
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for at, name, wall, cpu, where in steps:
        if t0 <= at <= t1:
            groups.setdefault((name.rsplit(".", 1)[-1], where), []).append((wall, cpu))
    out = [
        {
            "task": name,
            "stopped_at": where,
            "count": len(v),
            "wall_max_ms": round(max(w for w, _ in v) * 1000, 1),
            "wall_total_ms": round(sum(w for w, _ in v) * 1000, 1),
            "cpu_max_ms": round(max(c for _, c in v) * 1000, 1),
        }
        for (name, where), v in groups.items()
    ]
    return sorted(out, key=lambda g: -g["wall_total_ms"])[:12]


RUNNING = "gateway_event_loop_lag_running_seconds"


def lag_summary(window: Any) -> dict[str, float]:
    """p50/p99/max of a ``LagWindow``, and how many samples were over 5 and over
    10 ms: the buckets are coarse (10, then 25 ms), and a p99 of 25 ms may be 1 % and
    one sample, or 20 %."""
    from gateway.looplag import BUCKETS

    over = {f"over_{ms}ms": sum(window.counts[BUCKETS.index(ms / 1000) + 1 :]) for ms in (5, 10)}
    return {**window.summary(), **over}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.e2e_bench import fleet, mosquitto
    from gateway.looplag import from_metrics

    half = args.devices // 4  # the simulator's devices spread over 4 sites
    want = f"#={args.devices},{SITE}/#={half}"
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="probe-")))
        # the broker is not pinned unless --broker-cpu says so (it then shares the
        # load generator's CPU 1 and leaves CPU 0 to the gateway alone)
        mqtt_port = stack.enter_context(mosquitto(args.broker_cpu))[0] if args.mqtt else None
        port, admin, gw, gc_log = stack.enter_context(
            gateway(args.devices, args.rate, mqtt_port, tmp, args.extra, not args.bare)
        )
        if mqtt_port:
            fleet = subprocess.Popen(
                fleet(mqtt_port, args.devices, 600, args.rate), cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            os.sched_setaffinity(fleet.pid, {1})
            stack.callback(lambda: (fleet.terminate(), fleet.wait()))
        fleet_pid = fleet.pid if mqtt_port else None
        os.sched_setaffinity(gw.pid, {0})
        wait_topics(admin, args.devices)
        time.sleep(args.settle)
        joinwave = args.scenario == "joinwave"
        start = time.time()
        age_from = start + (0 if joinwave else args.warmup)
        until = age_from + args.seconds
        cmd = [
            sys.executable, __file__, "--as-screens", "--port", str(port),
            "--screens", str(args.screens), "--filters", f"#,{SITE}/#", "--want", want,
            "--until", str(until), "--age-from", str(age_from),
            "--sample-every", str(args.sample_every),
        ]  # fmt: skip
        parts = [[*cmd, "--part", "bulk"], [*cmd, "--part", "sampled"]]
        if not args.sampled_apart:
            parts = [[*cmd, "--part", "all"]]

        def start_screens() -> list[subprocess.Popen[bytes]]:
            return [subprocess.Popen(c, stdout=subprocess.PIPE, cwd=ROOT) for c in parts]

        if not joinwave:
            screens = start_screens()
            time.sleep(max(0.0, age_from - time.time()))
        before, cpu0, m0 = scrape(admin), proc_cpu(gw.pid), time.monotonic()
        threads0 = thread_cpu(gw.pid)
        sched0 = schedstat(gw.pid)
        steal0 = cpu_steal()
        fleet0 = proc_cpu(fleet_pid) if fleet_pid else 0.0
        if joinwave:
            screens = start_screens()
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy"), "record", "-p",
                 str(gw.pid), "-o", args.py_spy, "-d", str(int(args.seconds)),
                 "-r", str(args.py_spy_rate), "-f", "raw"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        rss = []
        while time.time() < until - 0.5:
            time.sleep(1.0)
            rss.append(round(rss_mib(gw.pid), 1))
        after, cpu1, m1 = scrape(admin), proc_cpu(gw.pid), time.monotonic()
        sched1 = schedstat(gw.pid)
        steal1 = cpu_steal()
        threads_cpu = {
            name: round(cpu - threads0.get(name, 0.0), 2)
            for name, cpu in thread_cpu(gw.pid).items()
            if cpu - threads0.get(name, 0.0) > 0
        }
        fleet1 = proc_cpu(fleet_pid) if fleet_pid else 0.0
        outs = [json.loads(p.communicate(timeout=120)[0].decode().strip().splitlines()[-1])
                for p in screens]  # fmt: skip
        if spy is not None:
            spy.wait(timeout=60)
        time.sleep(2.0)  # every screen left at once when its process ended
        left = scrape(admin)
        frames = metric(after, "gateway_websocket_frames_sent_total") - metric(
            before, "gateway_websocket_frames_sent_total"
        )
        gw.terminate()
        gw.wait(timeout=30)

        def delta(name: str) -> float:
            return metric(after, name) - metric(before, name)

        cpu = cpu1 - cpu0
        sent = metric(after, "gateway_websocket_sent_bytes_total") - metric(
            before, "gateway_websocket_sent_bytes_total"
        )
        result = {
            "scenario": args.scenario,
            "devices": args.devices,
            "screens": args.screens,
            "mqtt": bool(args.mqtt),
            "broker_cpu": args.broker_cpu,
            "bare": args.bare,
            "load_avg": os.getloadavg()[0],
            "window_s": round(m1 - m0, 1),
            "gateway_cpu_cores": round(cpu / (m1 - m0), 3),
            # the load generator shares CPU 1: if screens + fleet reach ~1 core, the
            # screens read late and the figures below are the load generator's limit
            "fleet_cpu_cores": round((fleet1 - fleet0) / (m1 - m0), 3),
            "frames": int(frames),
            "ingest_per_s": round(
                (
                    metric(after, "gateway_ingest_messages_total")
                    - metric(before, "gateway_ingest_messages_total")
                )
                / (m1 - m0)
            ),
            "cpu_us_per_frame": round(cpu / frames * 1e6, 2) if frames else None,
            # a screen gets at most one frame a tick: ticks under tick_hz mean ticks
            # that took longer than their interval
            "ticks_per_s": round(delta("gateway_tick_duration_seconds_count") / (m1 - m0), 2),
            "tick_ms_mean": round(
                delta("gateway_tick_duration_seconds_sum")
                / max(1.0, delta("gateway_tick_duration_seconds_count"))
                * 1e3,
                1,
            ),
            "sent_mib": round(sent / 2**20, 1),
            # how the screens that fell behind were caught up (architecture.md)
            "outbox": {name: int(counter(after, name) - counter(before, name)) for name in OUTBOX},
            "loop_lag": lag_summary(from_metrics(after).minus(from_metrics(before))),
            # what of each lateness the gateway's thread can have spent running (looplag.py)
            "loop_lag_running": lag_summary(
                from_metrics(after, RUNNING).minus(from_metrics(before, RUNNING))
            ),
            # the gateway's side of the data age: device timestamp to frame written
            # (screens in sync; at most 256 topics a tick), without the screens' reading
            "device_to_send": hist_window(before, after, "gateway_device_to_send_seconds"),
            # and from the gateway's receipt of the message (without the fleet's delays)
            "ingest_to_send": hist_window(before, after, "gateway_ingest_to_send_seconds"),
            # while all the screens leave at once (their process ends)
            "loop_lag_leaving": lag_summary(from_metrics(left).minus(from_metrics(after))),
            "gc": gc_summary(gc_log, m0, m1),
            "slow_steps": steps_summary(pathlib.Path(str(gc_log) + ".steps"), m0, m1),
            "slow_batches": batches_summary(pathlib.Path(str(gc_log) + ".steps.batches"), m0, m1),
            "late_samples": late_summary(pathlib.Path(str(gc_log) + ".steps.late"), m0, m1),
            # by the end, the screens' leaving included
            **{
                what: {
                    line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
                    for line in left.splitlines()
                    if line.startswith(f"gateway_websocket_{what}_total{{")
                    and float(line.rsplit(" ", 1)[1])
                }
                for what in ("disconnects", "send_failures")
            },
            "rss_mib": rss,
            "gateway_threads_cpu_s": threads_cpu,
            # the main thread's time on the CPU and runnable but waiting for it (s):
            # waiting means another task had its CPU (/proc/<pid>/schedstat)
            "gateway_sched_s": {
                "running": round((sched1[0] - sched0[0]) / 1e9, 2),
                "runnable_waiting": round((sched1[1] - sched0[1]) / 1e9, 2),
                "slices": sched1[2] - sched0[2],
            },
            # each CPU's time in interrupts, in softirqs (the kernel's network work:
            # on loopback, much of the screens' TCP) and stolen by the hypervisor (ms,
            # /proc/stat ticks): on the gateway's CPU 0, each shows as loop lag with no
            # CPU of its own, no waiting for the CPU and no epoll wait
            "irq_softirq_steal_ms_by_cpu": {
                cpu: [
                    (a - b) * 1000 // CLK_TCK for a, b in zip(steal1[cpu], steal0[cpu], strict=True)
                ]
                for cpu in steal1
            },
            # the sampled screens' figures (with --sampled-apart, from their own
            # process); the load generator's CPU and failures, of all the screens
            "screens_result": {
                **outs[-1],
                "cpu_cores": round(sum(o["cpu_cores"] for o in outs), 3),
                "screens": sum(o["screens"] for o in outs),
                "failed": sum(o["failed"] for o in outs),
                "processes": len(outs),
            },
        }
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--as-gateway":
        sys.exit(as_gateway(sys.argv[2], sys.argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", nargs="?", choices=["joinwave", "steady"], default="joinwave")
    ap.add_argument("--as-screens", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--filters", default="#", help=argparse.SUPPRESS)
    ap.add_argument("--want", default="", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--age-from", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--part", default="all", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1.0, help="reports per device per second")
    ap.add_argument("--screens", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    ap.add_argument("--warmup", type=float, default=10.0, help="steady: joining, unmeasured")
    ap.add_argument("--settle", type=float, default=3.0, help="after the fleet is seen")
    ap.add_argument(
        "--sample-every",
        type=int,
        default=100,
        help="one screen in N inflates and parses every frame (at 1 in 10, 2,000 screens "
        "saturate the load generator's core with inflating: the ages then measure it)",
    )
    ap.add_argument(
        "--sampled-apart", action="store_true",
        help="the sampled screens in a process of their own (both on CPU 1): else a "
        "sampled screen's read waits behind the reads of every screen ready with it "
        "(thousands, up to tens of ms: the load generator's queue, not the gateway's; a "
        "browser reads its one socket at once)",
    )  # fmt: skip
    ap.add_argument("--mqtt", action="store_true", help="fleet through mosquitto")
    ap.add_argument(
        "--bare", action="store_true",
        help="no Trio instrument of the probe's in the gateway (its per-step cost is then "
        "not in the loop lag; slow steps and batches are not reported)",
    )  # fmt: skip
    ap.add_argument(
        "--broker-cpu", type=int, default=None,
        help="pin mosquitto to this CPU (1: beside the load generator; default: not pinned)",
    )  # fmt: skip
    ap.add_argument("--extra", default="", help="more gateway TOML (after [server])")
    ap.add_argument("--py-spy", default="", help="record a py-spy profile here")
    ap.add_argument("--py-spy-rate", type=int, default=50, help="py-spy samples a second")
    args = ap.parse_args()
    if args.as_screens:
        as_screens(args)
        return
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
