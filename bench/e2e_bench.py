"""End-to-end benchmarks: a simulated fleet through a real mosquitto to many screens,
against what a team would do without the gateway, on the same input in the same run.

  bigscreen  N devices at 1 msg/s each -> mosquitto -> the gateway -> S screens at 10 Hz,
             half on '#' and half on one site, deadbands configured: the baseline of
             the slow workload (the comparison with the peers, under one configuration
             for all, is bench/scaling_bench.py)
  slow       bigscreen with ours, plus 5% more screens that never read
  storm      C screens (a line each, 1 Hz) on a gateway that is restarted: time until
             50%, 99% and 100% hold a state equal to the new gateway's, and the bytes
             it sent them: without a state directory (a new epoch: snapshots), and
             with one (the same epoch: the screens resume with deltas)

The server side runs pinned to CPU 0; the fleet and the screens (several processes of
bench/e2e_clients.py) on CPU 1; every process's CPU is reported. Each run is bounded
in time and stops by itself.

    python bench/e2e_bench.py [--quick] [--write] [--only bigscreen,slow,storm]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import gateway_deadbands  # noqa: E402
from bench.report import results_path, stop  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = 0, 1
SITE = "berlin"

#: what a wall screen does not need to see (the table every server gets in
#: bench/scaling_bench.py when deadbands are on)
DEADBANDS = gateway_deadbands()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[str] | None = None) -> bool:
    """True once something listens on ``port``; False if ``proc`` (the process meant
    to listen) exited first; an error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def process(
    cmd: list[str], *, cpu: int | None = None, **kw: Any
) -> Iterator[subprocess.Popen[str]]:
    """Start ``cmd``; on the way out stop it (SIGTERM, then SIGKILL) if it still runs."""
    proc = subprocess.Popen(cmd, text=True, cwd=ROOT, **kw)
    try:
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def mosquitto(
    cpu: int | None, *, sys_interval: int = 0
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A broker on a free port, pinned to ``cpu`` (None: not pinned); ``sys_interval``
    > 0: it publishes its $SYS counters that often (the scaling bench reads the input
    rate from them)."""
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as tmp:
        conf = pathlib.Path(tmp) / "mosquitto.conf"
        for _ in range(3):  # a free port can be taken before the broker binds it: another
            port = free_port()
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"log_dest none\nmax_connections -1\nsys_interval {sys_interval}\n"
            )
            cmd = ["mosquitto", "-c", str(conf)]
            with process(cmd, cpu=cpu, stderr=subprocess.DEVNULL) as p:
                if wait_port(port, proc=p):
                    yield port, p
                    return
        raise RuntimeError("mosquitto exited at start three times (ports taken?)")


def fleet(mqtt_port: int, devices: int, seconds: float, rate: float = 1.0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devices_sim",
        "--mqtt",
        f"mqtt://127.0.0.1:{mqtt_port}",
        "--devices",
        str(devices),
        "--rate",
        str(rate),
        "--connections",
        "4",
        "--duration",
        str(int(seconds)),
        "--no-offline-on-exit",
        "--quiet",
    ]


class Sampler:
    """Every second: CPU and RSS of the server-side processes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.rss: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    self.rss[name].append((time.monotonic() - self.t0, proc_rss(pid)))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self.t0
        out: dict[str, Any] = {"seconds": elapsed}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[f"{name}_cpu_cores"] = (proc_cpu(pid) - self.cpu0[name]) / elapsed
            series = self.rss[name]
            out[f"{name}_rss_mib"] = [round(b / 2**20, 1) for _, b in series]
        return out


def screens(
    kind: str,
    port: int,
    total: int,
    procs: int,
    filters: str,
    start_at: float,
    seconds: float,
    *,
    stalled: bool = False,
    deflate: bool = False,
    stack: contextlib.ExitStack,
) -> list[subprocess.Popen[str]]:
    out = []
    for i in range(procs):
        n = total // procs + (1 if i < total % procs else 0)
        cmd = [
            sys.executable,
            str(ROOT / "bench" / "e2e_clients.py"),
            "--port",
            str(port),
            "--kind",
            kind,
            "--clients",
            str(n),
            "--filters",
            filters,
            "--start-at",
            str(start_at),
            "--duration",
            str(seconds),
            "--cpu",
            str(LOAD_CPU),
        ]
        if stalled:
            cmd.append("--stalled")
        if deflate:
            cmd.append("--deflate")
        out.append(stack.enter_context(process(cmd, stdout=subprocess.PIPE)))
    return out


def collect(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    results = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # a screen process swamped past its end (a peer that floods it): it is not
            # counted, and the report says how many screens answered
            p.kill()
            p.communicate()
            continue
        lines = (out or "").strip().splitlines()
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"a screen process failed (exit {p.returncode})")
        results.append(json.loads(lines[-1]))
    return results


def hist_quantile(hist: dict[int, int], q: float) -> float:
    total = sum(hist.values())
    rank, seen = q * (total - 1), 0
    for ms, n in sorted(hist.items()):
        seen += n
        if seen > rank:
            return float(ms)
    return 0.0


def merge_screens(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """One view of several screen processes (ages merged from their histograms)."""
    hist: dict[int, int] = {}
    for r in results:
        for ms, n in r["age_hist_ms"].items():
            hist[int(ms)] = hist.get(int(ms), 0) + n
    by_filter: dict[str, list[float]] = {}
    for r in results:
        for f, b in r["bytes_by_filter"].items():
            by_filter.setdefault(f, []).append(b)
    per_second: dict[int, float] = {}
    for r in results:
        for sec, v in r["max_by_second"].items():
            per_second[int(sec)] = max(per_second.get(int(sec), 0.0), v)
    return {
        "age_p50_ms": hist_quantile(hist, 0.5),
        "age_p99_ms": hist_quantile(hist, 0.99),
        "age_max_ms": float(max(hist, default=0)),
        "age_max_by_second_ms": {k: round(v * 1000) for k, v in sorted(per_second.items())},
        "values_sampled": sum(hist.values()),
        "bytes_per_s_by_filter": {f: sum(v) / len(v) / seconds for f, v in by_filter.items()},
        "bytes_per_message": sum(r["sampled_bytes"] for r in results)
        / max(1, sum(r["sampled_messages"] for r in results)),
        "messages_per_s_per_sampled": sum(r["sampled_messages"] for r in results)
        / max(1, sum(r["sampled"] for r in results))
        / seconds,
        "subscribed": sum(r["subscribed"] for r in results),
        "closed": sum(r["closed"] for r in results),
        "load_cpu_cores": sum(r["cpu_s"] for r in results) / seconds,
    }


def metrics(admin_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
    return parse_metrics(text.decode())


def parse_metrics(text: str) -> dict[str, float]:
    """A /metrics exposition as ``{"name{label=value,...}": value}`` (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float:
    """Quantile of a Prometheus histogram over the window between two scrapes (the
    upper bound of the bucket it falls in, as histogram_quantile() without interpolation)."""
    buckets = []
    for key, value in after.items():
        if key.startswith(name + "_bucket{le="):
            le = key.split("le=", 1)[1].rstrip("}")
            buckets.append(
                (float("inf") if le == "+Inf" else float(le), value - before.get(key, 0))
            )
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return float("nan")


def gateway_config(tmp: pathlib.Path, mqtt_port: int | None, extra: str = "") -> pathlib.Path:
    path = tmp / "gateway.toml"
    mqtt = f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n' if mqtt_port else ""
    path.write_text(
        "[server]\nmax_connections = 20000\nmax_connections_per_ip = 20000\n"
        f"{extra}\n{mqtt}{DEADBANDS}"
    )
    return path


@contextlib.contextmanager
def our_gateway(
    tmp: pathlib.Path,
    mqtt_port: int | None,
    *args: str,
    extra: str = "",
    port: int = 0,
    log: pathlib.Path | None = None,
    listeners: dict[str, socket.socket] | None = None,
) -> Iterator[tuple[int, int, subprocess.Popen[str]]]:
    from bench.report import gateway_process

    admin = free_port()
    cfg = gateway_config(tmp, mqtt_port, extra)
    with gateway_process(
        "--config",
        str(cfg),
        "--port",
        str(port),
        "--admin-port",
        str(admin),
        *args,
        cpu=SERVER_CPU,
        log=log,
        listeners=listeners,
    ) as gw:
        yield gw.port, admin, gw.proc


# -- workloads ---------------------------------------------------------------------------


def bigscreen(
    impl: str, devices: int, subscribers: int, seconds: float, stalled: int = 0
) -> dict[str, Any]:
    ws_filters = f"#,{SITE}/#"
    # the screens connect and take their first snapshot before the measurement starts
    warmup = (3.0 if subscribers <= 200 else 8.0) + subscribers / 100
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        broker_port, broker = stack.enter_context(mosquitto(LOAD_CPU))
        stack.enter_context(
            process(fleet(broker_port, devices, warmup + seconds + 30), cpu=LOAD_CPU)
        )
        pids = {"broker": broker.pid}
        port, admin, server = stack.enter_context(our_gateway(pathlib.Path(tmp), broker_port))
        pids["server"] = server.pid
        time.sleep(2.0)  # the fleet connects and publishes its first round
        start_at = time.time() + warmup
        kind = "ws"
        procs = screens(
            kind,
            port,
            subscribers,
            4,
            ws_filters,
            start_at,
            seconds,
            deflate=impl == "ours",  # like a browser; "ours-plain" offers no compression
            stack=stack,
        )
        if stalled:
            procs_stalled = screens(
                kind, port, stalled, 1, ws_filters, start_at, seconds, stalled=True, stack=stack
            )
        time.sleep(max(0.0, start_at - time.time()))
        before = metrics(admin) if admin else {}
        sampler = Sampler(pids)
        time.sleep(max(0.0, start_at + seconds - 0.3 - time.time()))
        after = metrics(admin) if admin else {}  # before the screens leave
        server_side = sampler.stop()
        results = collect(procs, timeout=warmup + 60)
        if stalled:
            collect(procs_stalled, timeout=30)
    out = {**merge_screens(results, seconds), **server_side, "impl": impl}
    if after:
        out["metrics"] = {
            k: after[k] - before.get(k, 0.0)
            for k in after
            if k.startswith(("gateway_outbox_", "gateway_websocket_disconnects"))
            and not k.endswith("_created")
            and after[k] - before.get(k, 0.0)
        }
        for name in ("gateway_device_to_send_seconds", "gateway_ingest_to_send_seconds"):
            out[name.removeprefix("gateway_").removesuffix("_seconds") + "_ms"] = {
                f"p{int(q * 100)}": histogram_quantile(before, after, name, q) * 1000
                for q in (0.5, 0.99)
            }
        out["ingest_per_s"] = (
            after.get("gateway_ingest_messages_total{source=mqtt}", 0)
            - before.get("gateway_ingest_messages_total{source=mqtt}", 0)
        ) / seconds
    return out


SITES = ("berlin", "paris", "madrid", "rome")  # the simulator's first four sites


def storm(
    clients: int,
    devices: int,
    procs: int = 4,
    persist: bool = False,
    mqtt: bool = False,
    fleet_rate: float = 1.0,
    logs: pathlib.Path | None = None,
    activation: bool = True,
) -> dict[str, Any]:
    """Restart the gateway under ``clients`` screens; when does each hold its state again?
    With ``persist``, the gateway has a state directory and keeps its epoch. With
    ``mqtt``, the fleet publishes through mosquitto and goes on while the gateway
    restarts (else it is simulated inside the gateway and restarts with it). ``logs``:
    keep the old and the new gateway's logs there (the restart's timeline).

    With ``activation`` the bench holds the public listening socket and hands it to
    each gateway as systemd's socket activation does (deploy/gateway.socket): screens
    that reconnect while no gateway runs wait in its backlog instead of being refused.
    Without it, each gateway binds the port itself."""
    # bytecode as an installed gateway has it (pip compiles it at install): a checkout
    # run with PYTHONDONTWRITEBYTECODE=1 would compile every module at each start
    import compileall

    for package in ("gateway", "devices_sim"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    port = free_port()
    listeners: dict[str, socket.socket] | None = None
    if activation:
        held = socket.create_server(("127.0.0.1", 0), backlog=4096)
        port, listeners = held.getsockname()[1], {"public": held}
    filters = ",".join(f"{site}/line{n}/#" for site in SITES for n in range(1, 5))
    # the gateways stop before their state directory goes (else the last one's final
    # checkpoint fails, and says so)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        broker: int | None = None
        args: tuple[str, ...] = ("--simulate", str(devices))
        if mqtt:
            broker, _ = stack.enter_context(mosquitto(LOAD_CPU))
            stack.enter_context(process(fleet(broker, devices, 600, fleet_rate), cpu=LOAD_CPU))
            args = ()
        extra = f'[persist]\nstate_dir = "{tmp}/state"\n' if persist else ""
        first = contextlib.ExitStack()
        _, _, old = first.enter_context(
            our_gateway(
                pathlib.Path(tmp),
                broker,
                *args,
                port=port,
                extra=extra,
                log=logs / "old.log" if logs else None,
                listeners=listeners,
            )
        )
        workers = []
        for i in range(procs):
            n = clients // procs + (1 if i < clients % procs else 0)
            cmd = [
                sys.executable,
                str(ROOT / "bench" / "storm_clients.py"),
                "--port",
                str(port),
                "--clients",
                str(n),
                "--filters",
                filters,
                "--cpu",
                str(LOAD_CPU),
                "--seed",
                str(i),
            ]
            workers.append(
                stack.enter_context(process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            )
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"storm screens never got ready: {line!r}")
        if mqtt and fleet_rate < 1:
            time.sleep(3 / fleet_rate)  # every device reports a few times: intervals learned
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("restart\n")
            w.stdin.flush()
        killed = time.time()
        # SIGTERM: every screen gets 1012 and goes away at once, then the final
        # checkpoint. The helper's 10 s before SIGKILL is too short for 5,000 screens
        # on a loaded machine, and a kill would restart under a new epoch
        old.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.wait(timeout=120)
        graceful = old.returncode == 0
        first.close()  # stops it if it is still running
        down = time.time()
        _, admin, new = stack.enter_context(
            our_gateway(
                pathlib.Path(tmp),
                broker,
                *args,
                port=port,
                extra=extra,
                log=logs / "new.log" if logs else None,
                listeners=listeners,
            )
        )
        listening = time.time()
        cpu_listening = proc_cpu(new.pid)
        results = collect(workers, timeout=240)  # the screens give up 120 s after the restart
        cpu_done = proc_cpu(new.pid)  # the new gateway's CPU from listening to the last screen
        sent = float("nan")
        for _ in range(5):  # a gateway this busy may answer late
            try:
                sent = metrics(admin)["gateway_websocket_sent_bytes_total"]
                break
            except OSError:  # a timeout included
                time.sleep(2)
    if listeners:
        listeners["public"].close()
    load = os.getloadavg()[0]  # the machine is shared: timings are upper bounds
    times = sorted(
        (t - killed) if t is not None else float("inf") for r in results for t in r["consistent_at"]
    )

    def at(q: float, ts: list[float] = times) -> float:
        return ts[min(len(ts) - 1, max(0, int(q * len(ts)) - 1))]

    def since_stop(key: str) -> list[float]:
        return sorted(
            (t - killed) if t is not None else float("inf") for r in results for t in r[key]
        )

    # the screens' side of the timeline: first attempt after close 1012, first
    # handshake answered (101) after it
    gone, retry, opened = since_stop("gone_at"), since_stop("retry_first_at"), since_stop("open_at")

    return {
        "clients": clients,
        "devices": devices,
        "stop_s": down - killed,
        "listening_s": listening - killed,
        "p50_s": at(0.5),
        "p99_s": at(0.99),
        "p100_s": times[-1],
        "after_listening_p50_s": at(0.5) - (listening - killed),
        "after_listening_p99_s": at(0.99) - (listening - killed),
        "after_listening_p100_s": times[-1] - (listening - killed),
        "never": sum(t == float("inf") for t in times),
        "gone_s": {f"p{q}": at(q / 100, gone) for q in (0, 50, 99, 100)},
        "retry_first_s": {f"p{q}": at(q / 100, retry) for q in (0, 50, 99, 100)},
        "opened_s": {f"p{q}": at(q / 100, opened) for q in (0, 50, 99, 100)},
        "failed_attempts": sum(r["failed_attempts"] for r in results),
        "gateway_start_cpu_s": cpu_listening,  # the new process until it logged listening
        "gateway_cpu_s": cpu_done - cpu_listening,  # ... then until every screen was consistent
        "screens_cpu_s": sum(r["cpu_s"] for r in results),
        "gaps": sum(r["gaps"] for r in results),
        "connects": sum(r["connects"] for r in results),
        "persist": persist,
        "mqtt": mqtt,
        "activation": activation,
        "fleet_rate": fleet_rate,
        "graceful_stop": graceful,  # it exited by itself (else killed: a new epoch)
        "load_1m": load,
        "snapshots": sum(r["snapshots"] for r in results),
        # what the screens received from the restart until each was consistent
        "catch_up_bytes": sum(r["catch_up_bytes"] for r in results),
        "bytes_sent": sent,  # by the new gateway until every screen was consistent
        # the resumed screens' first state message: what changed since their seqs
        "held_topics": sum(r["held_topics"] for r in results),
        "resumed": sum(r["resumed"] for r in results),
        "join_bytes": sum(r["join"]["bytes"] for r in results),
        "join_deltas": sum(r["join"]["deltas"] for r in results),
        "join_meta_only": sum(r["join"]["meta_only"] for r in results),
        "join_with_meta": sum(r["join"]["with_meta"] for r in results),
        "catch_up_state_bytes": sum(r["catch_up_state_bytes"] for r in results),
        "join_snapshots": sum(r["join"]["snapshots"] for r in results),
        "changed_topics": len({t for r in results for t in r["join"]["topics"]}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller fleet, fewer screens")
    ap.add_argument("--write", action="store_true", help="rewrite docs/benchmarks.md")
    ap.add_argument("--only", default="bigscreen,slow,storm", help="comma-separated workloads")
    ap.add_argument(
        "--impls", default="ours", help="bigscreen: ours, ours-plain (screens without deflate)"
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/benchmarks.md from bench/results/e2e.json without measuring",
    )
    ap.add_argument("--storm-screens", type=int, default=0, help="screens in the storm")
    ap.add_argument(
        "--storm-mqtt-screens", type=int, default=0, help="screens in the MQTT-fed storms"
    )
    ap.add_argument(
        "--storm-fleet-rate",
        default="1,0.05",
        help="reports per second of each device of the MQTT-fed storms' fleet; "
        "comma-separated: the MQTT pair of storms runs once per rate",
    )
    ap.add_argument(
        "--storm-listener",
        choices=("activation", "bind"),
        default="activation",
        help="activation: the bench holds the listening socket over the restart, as "
        "systemd does with deploy/gateway.socket (default); bind: each gateway binds it",
    )
    ap.add_argument(
        "--storm-logs",
        metavar="DIR",
        help="keep each storm's old and new gateway logs in DIR/<storm> (the timeline)",
    )
    ap.add_argument(
        "--storm-kinds",
        default="storm,storm_sim_persist,storm_mqtt,storm_persist",
        help="which of the storms to run",
    )
    args = ap.parse_args()
    if args.report_only:
        from bench.report import write_section

        saved = json.loads((ROOT / "bench" / "results" / "e2e.json").read_text())
        for key, title, body in report(saved):
            write_section(ROOT / "docs" / "benchmarks.md", key, title, body)
        print("docs/benchmarks.md updated from bench/results/e2e.json")
        return
    devices, subscribers, seconds = (1000, 100, 5.0) if args.quick else (10000, 1000, 30.0)
    results: dict[str, Any] = {"quick": args.quick}
    only = args.only.split(",")
    if "bigscreen" in only:
        results["bigscreen"] = {}
        for impl in args.impls.split(","):
            print(f"bigscreen: {impl}, {devices:,} devices, {subscribers:,} screens", flush=True)
            r = bigscreen(impl, devices, subscribers, seconds)
            results["bigscreen"][impl] = r
            print(json.dumps({k: v for k, v in r.items() if "by_second" not in k}), flush=True)
    if "slow" in only:
        stalled = subscribers // 20
        print(f"slow: ours, {subscribers:,} screens + {stalled} that never read", flush=True)
        results["slow"] = bigscreen("ours", devices, subscribers, seconds, stalled=stalled)
        print(json.dumps({k: v for k, v in results["slow"].items() if "by_second" not in k}))
    if "storm" in only:
        n, d = (500, 500) if args.quick else (5000, 1000)
        if args.storm_screens:
            n = args.storm_screens
        # the MQTT pair adds the broker and the fleet to the same two cores: 5,000 screens
        # did not finish in time on a loaded machine, so it runs smaller unless asked
        n_mqtt = args.storm_mqtt_screens or min(n, 2000)
        rates = [float(r) for r in args.storm_fleet_rate.split(",")]
        runs = [("storm", False, False, n, 1.0), ("storm_sim_persist", True, False, n, 1.0)]
        for rate in rates:  # each rate: the snapshot storm and the resume storm, in turn
            runs += [("storm_mqtt", False, True, n_mqtt, rate)]
            runs += [("storm_persist", True, True, n_mqtt, rate)]
        for kind, persist, mqtt, screens, rate in runs:
            if kind not in args.storm_kinds.split(","):
                continue
            key = f"{kind}@{rate:g}" if mqtt else kind
            how = "with its state (same epoch)" if persist else "without state (new epoch)"
            fleet_kind = f"MQTT fleet at {rate:g} Hz" if mqtt else "in-process fleet"
            print(f"storm: {screens:,} screens, {fleet_kind}, restarted {how}", flush=True)
            logs = pathlib.Path(args.storm_logs) / key if args.storm_logs else None
            results[key] = storm(
                screens,
                d,
                persist=persist,
                mqtt=mqtt,
                fleet_rate=rate,
                logs=logs,
                activation=args.storm_listener == "activation",
            )
            print(json.dumps(results[key]), flush=True)
    out = results_path("e2e", args.quick)
    if out.exists() and set(only) != {"bigscreen", "slow", "storm"}:
        previous = json.loads(out.read_text())  # a partial run keeps the others' results
        if previous.get("quick") == args.quick:
            results = {**previous, **results}
    from bench.report import machine_info, write_section

    results["machine"] = machine_info()
    if "storm" in only:
        results["storm_machine"] = results["machine"]
    results["devices"], results["subscribers"], results["seconds"] = devices, subscribers, seconds
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"raw results: {out.relative_to(ROOT)}")
    if args.write:
        for key, title, body in report(results):
            write_section(ROOT / "docs" / "benchmarks.md", key, title, body)
        print("docs/benchmarks.md updated")


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def age_growth(r: dict[str, Any]) -> float:
    """How fast the oldest value a screen receives gets older: ms per second of run."""
    series = [(float(k), float(v)) for k, v in r["age_max_by_second_ms"].items()]
    return slope(series)


def met(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def report(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    sections = []
    devices, subs, seconds = res["devices"], res["subscribers"], res["seconds"]
    cmd = "`make bench` (`python bench/e2e_bench.py --write`)"
    setup = (
        f"Command: {cmd}. {devices:,} simulated devices at 1 message/s each, published "
        f"by `devices-sim` into a real mosquitto; {subs:,} screens at 10 Hz, half on `#`, "
        f"half on one site (`{SITE}/#`, a quarter of the fleet). Server side pinned to "
        f"CPU 0; the fleet and the screens (4 processes of `bench/e2e_clients.py`) on "
        f"CPU 1. Deadbands configured (`[[state.deadbands]]`, the table of "
        f"bench/peers.py). Measured for {seconds:g} s after the screens connected and took "
        f"their snapshots. Data age is measured at the screen: receipt time minus the "
        f"timestamp the simulator put in the device message, for every value received by "
        f"one screen in 25."
    )
    big = res.get("bigscreen", {})
    slow = res.get("slow")
    if slow and big.get("ours"):
        ours = big["ours"]
        rss = slow["server_rss_mib"]
        half = rss[len(rss) // 2 :]
        trend = slope([(float(i), v) for i, v in enumerate(half)]) * 60
        m = slow.get("metrics", {})
        ends = ", ".join(f"`{k}` {v:g}" for k, v in sorted(m.items()) if "shared" not in k)
        diff = slow["age_p99_ms"] - ours["age_p99_ms"]
        body = (
            f"{setup} The same run twice: as it is, and with {subs // 20} more "
            f"screens (5%) that subscribe to `#` with a 4 KiB receive buffer and never "
            f"read again.\n\n"
            "| | value |\n|---|---:|\n"
            f"| healthy screens' data age p50 / p99 / max | **{slow['age_p50_ms']:.0f} / "
            f"{slow['age_p99_ms']:.0f} / {slow['age_max_ms']:.0f} ms** |\n"
            f"| the same without the stalled screens | "
            f"{ours['age_p50_ms']:.0f} / {ours['age_p99_ms']:.0f} / {ours['age_max_ms']:.0f} ms |\n"
            f"| gateway CPU | {slow['server_cpu_cores']:.2f} cores |\n"
            f"| gateway RSS, each second | {', '.join(f'{v:.0f}' for v in rss)} MiB |\n"
            f"| RSS trend over the second half | {trend:+.1f} MiB per minute |\n"
            f"| how the stalled screens ended (policy counters) | {ends or 'none yet'} |\n\n"
            f"Target: healthy p99 worse by at most 10 ms: "
            f"**{'met' if diff <= 10 else 'NOT met'}** ({diff:+.0f} ms); gateway memory flat: "
            f"**{'met' if abs(trend) < 1.0 else 'NOT met'}** ({trend:+.1f} MiB/min)."
        )
        sections.append(("e2e-slow", "End to end: slow screens", body))
    storm = res.get("storm")
    if storm:
        sections.append(("e2e-storm", "End to end: reconnect storm", storm_report(res, cmd)))
    return sections


def storm_report(res: dict[str, Any], cmd: str) -> str:
    """The restart-storm section: the snapshot storm, and per fleet the same storm with
    the state kept (resumes) next to it, from the same run."""
    storm = res["storm"]
    body = (
        f"Command: {cmd}. A gateway with {storm['devices']:,} simulated devices and "
        f"{storm['clients']:,} screens, each on one production line (`<site>/lineN/#`, "
        f"about {storm['devices'] // 16} topics) at 1 Hz, in 4 processes of "
        f"`bench/storm_clients.py` (the Python client's mirror and backoff on raw "
        f"sockets). Once all hold their state the gateway is stopped (SIGTERM: every "
        f"screen gets close 1012 at once) and a new one started on the same port"
        + (
            " (the bench holds the listening socket and hands it to each gateway, as "
            "systemd does with `deploy/gateway.socket`: screens that reconnect while no "
            "gateway runs wait in its backlog, none is refused)"
            if storm.get("activation")
            else " (each gateway binds the port itself: attempts while none runs are refused)"
        )
        + "; a "
        f"screen counts as consistent when it holds every one of its topics under the "
        f"new epoch (gaps would force a resync and are counted). The machine "
        f"({res.get('storm_machine', res.get('machine', {})).get('cpu', '?')}, "
        f"{os.cpu_count()} cores) is shared: the 1-minute load average was "
        f"{storm.get('load_1m', float('nan')):.1f}, so every time here is an upper bound; "
        f"bytes are not affected.\n\n"
        "| | seconds after the stop | seconds after the new gateway listened |\n"
        "|---|---:|---:|\n"
        f"| old gateway gone | {storm['stop_s']:.2f} | |\n"
        f"| new gateway listening | {storm['listening_s']:.2f} | 0 |\n"
        f"| 50% of screens consistent | {storm['p50_s']:.2f} "
        f"| {storm['after_listening_p50_s']:.2f} |\n"
        f"| 99% | **{storm['p99_s']:.2f}** | {storm['after_listening_p99_s']:.2f} |\n"
        f"| 100% | **{storm['p100_s']:.2f}** | {storm['after_listening_p100_s']:.2f} |\n\n"
        f"Screens never consistent: {storm['never']}; gaps seen: {storm['gaps']}. "
        f"Target: 99% within 3 s: **{'met' if storm['p99_s'] <= 3 else 'NOT met'}**; "
        f"100% within 10 s: **{'met' if storm['p100_s'] <= 10 else 'NOT met'}** (from "
        f"the stop, including the new process's start)."
    )
    # (label, snapshot storm, resume storm) per fleet, as far as this run has them
    pairs = [("in-process fleet", storm, res.get("storm_sim_persist"))]
    rates = sorted(
        {float(k.split("@")[1]) for k in res if k.startswith("storm_mqtt@")}, reverse=True
    )
    pairs += [
        (f"MQTT fleet, {r:g} Hz", res.get(f"storm_mqtt@{r:g}"), res.get(f"storm_persist@{r:g}"))
        for r in rates
    ]
    pairs = [(label, a, b) for label, a, b in pairs if a and b and "join_bytes" in b]
    if not pairs:
        return body
    cols = [r for _, a, b in pairs for r in (a, b)]

    def row(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(r) for r in cols) + " |\n"

    def mb(n: float) -> str:
        return f"{n / 1e6:.2f} MB"

    def changed(r: dict[str, Any]) -> str:
        if not r["persist"]:
            return "(all: snapshots)"
        return f"{r['changed_topics']:,} topics; {r['join_deltas']:,} deltas"

    head = " | ".join(f"{label}: new epoch | {label}: same epoch" for label, _, _ in pairs)
    body += (
        "\n\n**Restarting with the state kept** (`[persist] state_dir`), each storm next "
        "to the snapshot storm of the same fleet, run right after it. The graceful stop "
        "writes a final checkpoint after closing the screens; the new gateway restores "
        "it with the same epoch and seqs (a topic goes stale on its own deadline, as if "
        "the gateway had never stopped), and each screen resumes with its seqs. Under "
        "the same epoch a screen is consistent once its resumed subscription got its "
        "first state message: the deltas of the topics that changed since its seqs. "
        "The in-process fleet restarts with the gateway, from its first values (every "
        "topic changes); the MQTT fleet (devices-sim through mosquitto, not retained) "
        "goes on while the gateway is down, and its messages in that time are lost to "
        "the gateway (it is not subscribed), so what changed is what devices sent "
        "after the new gateway subscribed and before each screen resumed.\n\n"
        f"| | {head} |\n|---|"
        + "---:|" * len(cols)
        + "\n"
        + row("screens", lambda r: f"{r['clients']:,}")
        + row("load average (1 min)", lambda r: f"{r.get('load_1m', float('nan')):.1f}")
        + row("downtime: stop to new gateway listening", lambda r: f"{r['listening_s']:.2f} s")
        + row("topics the screens held (screens x topics)", lambda r: f"{r['held_topics']:,}")
        + row("changed while down (resume: distinct topics; deltas sent)", changed)
        + row("snapshot messages after the stop", lambda r: f"{r['snapshots']:,}")
        + row(
            "deltas that change no field (online/stale only)",
            lambda r: f"{r['join_meta_only']:,}" if r["persist"] else "",
        )
        + row(
            "state message bytes until consistent",
            lambda r: mb(r["catch_up_state_bytes"]),
        )
        + row(
            "all message bytes until consistent (welcome, acks too)",
            lambda r: mb(r["catch_up_bytes"]),
        )
        + row("bytes the new gateway sent until all were consistent", lambda r: mb(r["bytes_sent"]))
        + row(
            "screens' connections closed (1012, or cut), p50 / p99 (s after the stop)",
            lambda r: _q(r, "gone_s", "p50", "p99"),
        )
        + row(
            "first attempt after that, p50 / p99",
            lambda r: _q(r, "retry_first_s", "p50", "p99"),
        )
        + row(
            "first handshake answered (101), p0 / p50 / p99",
            lambda r: _q(r, "opened_s", "p0", "p50", "p99"),
        )
        + row(
            "attempts refused (or 503) before that",
            lambda r: f"{r['failed_attempts']:,}" if "failed_attempts" in r else "",
        )
        + row(
            "new gateway's CPU: start-up / after, per screen",
            lambda r: (
                f"{r['gateway_start_cpu_s']:.2f} s / "
                f"{r['gateway_cpu_s'] / r['clients'] * 1e6:.0f} µs"
                if "gateway_start_cpu_s" in r
                else ""
            ),
        )
        + row("50% consistent (s after the stop)", lambda r: f"{r['p50_s']:.2f}")
        + row("99% consistent", lambda r: f"{r['p99_s']:.2f}")
        + row("100% consistent", lambda r: f"{r['p100_s']:.2f}")
        + row("never consistent; gaps", lambda r: f"{r['never']}; {r['gaps']}")
    )
    goals = []
    for label, a, b in pairs:
        share = b["catch_up_state_bytes"] / max(1, a["catch_up_state_bytes"])
        alls = b["catch_up_bytes"] / max(1, a["catch_up_bytes"])
        if not b["resumed"]:
            goals.append(
                f"- {label}: **the epoch was not kept** (the old gateway did not stop "
                f"gracefully: {'killed' if not b.get('graceful_stop') else 'no resume'}), "
                f"so every screen got snapshots: not a resume measurement."
            )
            continue
        goals.append(
            f"- {label}: state bytes {share:.1%} of the snapshot storm's "
            f"({alls:.1%} with welcome and acks): under 10% {met(share < 0.1)}; 99% "
            f"consistent {b['p99_s']:.2f} s after the stop (downtime "
            f"{b['listening_s']:.2f} s): within 1.5 s {met(b['p99_s'] <= 1.5)}. "
            f"{b['join_deltas'] / max(1, b['held_topics']):.0%} of the topics the screens "
            f"held had changed when they resumed ({b['changed_topics']:,} distinct "
            f"topics); {b['join_meta_only'] / max(1, b['join_deltas']):.0%} of the "
            f"deltas changed no field, only online/stale."
        )
    body += (
        "\nGoals (resume against the same fleet's snapshot storm):\n\n"
        + "\n".join(goals)
        + "\n\nWhat a resumed screen is sent: for each topic whose seq moved past the "
        "one the screen held, one delta from that seq with only the fields that "
        "changed (and online/stale if they changed); nothing for the other topics, no "
        "snapshot, no `$` topic (these screens' filters do not cover them). That is the "
        "minimum the protocol can send for what changed. Two things make topics change "
        "while the gateway is down: the devices (a 1 Hz fleet changes nearly every "
        "topic within seconds; the in-process fleet restarts from its first values), "
        "and staleness: a restored topic is marked stale once its device has been "
        "silent for its stale limit since it last spoke, the same rule as during a "
        "broker outage (a learned limit is 3 reporting intervals, at least 5 s: a "
        "restart and reconnect longer than that marks every device not heard again "
        "yet stale, and its next report clears it; the table counts the deltas that "
        "carry nothing else). A delta's "
        "envelope (topic, base, seq, device and receive times) is most of a "
        "2-to-5-field snapshot, so the bytes track the share of topics that changed: "
        "the 10% goal holds when few topics change while the gateway is down "
        "(slow-reporting devices, a short restart), not for a 1 Hz fleet over a "
        "restart of seconds. The welcome message (about 500 bytes, mostly `limits`) "
        "goes to every reconnecting screen in both storms.\n\n"
        "Where the time goes (the timeline rows): the old gateway closes every screen "
        "and writes its final checkpoint; the new process starts (Python, imports, "
        "reading and restoring the checkpoint) and serves; from then on the screens "
        "are accepted as fast as one core handles their upgrade, welcome, resume and "
        "subscribe and the resumed subscriptions' first deltas (the CPU per screen "
        "row). Screens wait for the gateway, not for their retry timers: the first "
        "handshake is answered as soon as the new gateway serves, and the rest follow "
        "at the rate of that CPU cost, so with thousands of screens it, not the "
        "downtime, sets the time to 99%."
    )
    return body


def _q(r: dict[str, Any], key: str, *qs: str) -> str:
    """Quantiles of one of a storm's timeline distributions, as "a / b" seconds."""
    if key not in r:
        return ""
    return " / ".join(f"{r[key][q]:.2f}" for q in qs)


if __name__ == "__main__":
    main()
