"""Chart history: bytes per topic-field and the RSS of a fleet with the default window.

Measures (the default [history]: 600 s at 1 s, float32 min/max/last per bucket):
  1. bytes per series (topic, field), counted by tracemalloc around the creation of
     1,000 series (ring buffers, series objects, index entries);
  2. RSS of a process holding 10,000 devices x 3 numeric fields in the state store
     with and without history, each in a fresh child process, after 3 reports per
     device fed through the gateway's own accepted-change path (app._observer);
  3. record cost (µs per numeric field value accepted) and the cost of serving one
     full-window series (query + JSON encode), which bounds a subscription's history.

    python bench/history_bench.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
import tracemalloc

import orjson

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.report import machine_info, results_path, write_section
from gateway.app import _observer
from gateway.core.alarms import AlarmEngine
from gateway.core.history import History, HistoryConfig
from gateway.core.state import StateStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIELDS = ("temperature", "humidity", "power")


def rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fill(devices: int, with_history: bool) -> tuple[StateStore, History]:
    store = StateStore("bench", stale_learn=True)
    history = History(HistoryConfig(enabled=with_history, max_bytes=1 << 40))
    store.on_accept = _observer(history, AlarmEngine([], store))
    for r in range(3):
        now = 1_700_000_000.0 + r * 5
        for i in range(devices):
            store.apply(
                f"site/s{i % 20}/line{i % 7}/dev{i}",
                {"temperature": 20 + (i + r) % 10, "humidity": 40.5 + r, "power": 1000.0 + i},
                now + i * 1e-4,
            )
    return store, history


def child(kind: str, devices: int) -> None:
    base = rss_bytes()
    _store, history = fill(devices, kind == "history")  # kept alive for the RSS reading
    print(json.dumps({"rss": rss_bytes(), "base": base, "series": history.stats.series}))


def run_child(kind: str, devices: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--devices", str(devices)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def series_bytes(n: int = 1000) -> float:
    h = History()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        h.record(f"t/{i}", {"v": 1.0}, 1000.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


def record_cost(n: int) -> float:
    h = History()
    topics = [f"t/{i}" for i in range(1000)]
    t0 = time.perf_counter()
    for k in range(n):
        h.record(topics[k % 1000], {"a": k * 0.5, "b": 1.0, "c": 2.0}, 1000.0 + k / 1000)
    return (time.perf_counter() - t0) / (3 * n) * 1e6


def serve_cost(runs: int) -> tuple[float, int]:
    h = History()
    for s in range(600):
        h.record("d", {f: s * 0.25 for f in FIELDS}, 1000.0 + s)
    t0 = time.perf_counter()
    size = 0
    for _ in range(runs):
        doc = {f: h.query("d", f, 600, 1599.5) for f in FIELDS}
        size = len(orjson.dumps(doc))
    return (time.perf_counter() - t0) / runs * 1e3, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--devices", type=int, default=10_000)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.devices)
        return
    devices = 1000 if args.quick else args.devices
    per_series = series_bytes()
    without = run_child("store", devices)
    with_h = run_child("history", devices)
    rec_us = record_cost(20_000 if args.quick else 200_000)
    serve_ms, frame_bytes = serve_cost(20 if args.quick else 100)
    history_mb = (with_h["rss"] - without["rss"]) / 1e6
    result = {
        "devices": devices,
        "fields": len(FIELDS),
        "series": with_h["series"],
        "bytes_per_series": round(per_series),
        "rss_store_mb": round(without["rss"] / 1e6, 1),
        "rss_store_history_mb": round(with_h["rss"] / 1e6, 1),
        "history_rss_mb": round(history_mb, 1),
        "history_rss_bytes_per_series": round(history_mb * 1e6 / max(1, with_h["series"])),
        "record_us_per_value": round(rec_us, 3),
        "serve_ms_per_topic_3_fields": round(serve_ms, 3),
        "frame_bytes_per_topic_3_fields": frame_bytes,
        "machine": machine_info(),
    }
    results_path("history", args.quick).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.write:
        r = result
        frame = max(1, r["frame_bytes_per_topic_3_fields"])
        topics_in_budget = 2 * 1024 * 1024 // frame
        budget_ms = round(topics_in_budget * r["serve_ms_per_topic_3_fields"])
        serve = f"{r['serve_ms_per_topic_3_fields']} ms, {frame:,} bytes"
        body = f"""
Command: `make bench` (`python bench/history_bench.py --write`). The default `[history]`:
a 600 s window at 1 s resolution, min/max/last per bucket as 32-bit floats.

| measure | value |
|---|---:|
| bytes per series (topic, field), tracemalloc | {r["bytes_per_series"]:,} |
| RSS, {r["devices"]:,} devices x 3 fields, state only | {r["rss_store_mb"]} MB |
| RSS, the same with history ({r["series"]:,} series) | {r["rss_store_history_mb"]} MB |
| history's share of RSS, per series | {r["history_rss_bytes_per_series"]:,} bytes |
| record: µs per numeric value accepted | {r["record_us_per_value"]} |
| one topic's full window, 3 fields: query + JSON encode | {serve} |

The buckets are 7,200 bytes a series (600 x 3 x 4); the rest is three array headers,
the series object and the index. A subscription's history (at most 2 MiB, about
{topics_in_budget} topics of 3 full fields) goes out one topic per event-loop
checkpoint, so it delays other work by one topic's cost at a time
({r["serve_ms_per_topic_3_fields"]} ms here), about {budget_ms} ms of CPU in all.
Run on: {r["machine"]["cpu"]}, {r["machine"]["cores"]} cores, shared with other jobs
(the µs and ms figures are upper bounds; RSS is not affected).
"""
        write_section(ROOT / "docs" / "benchmarks.md", "history", "Chart history", body)


if __name__ == "__main__":
    main()
