"""The big screen under load in headless Chromium: frame times and JS heap.

A gateway with N simulated devices at R messages per second each (default 5,000 at
10 Hz) serves the dashboard at 1920x1080 in Debian's Chromium (Playwright). Through the
Performance API the page records every animation frame's interval, and every 5 s the
JS heap after a forced GC (the frame interval holding that GC, the bench's own work, is
left out of the frame figures and reported apart), and the Long Animation Frames API
says which scripts the frames over 33 ms were made of (printed after the run). Reported:
average and p99 frame time, long tasks, heap at
start and end and its trend (least-squares slope after a 10 s warm-up), one row a
minute (heap, frame average, updates, load average), and the updates per second the
page actually received. Before that, the load: the fleet runs --history-wait seconds
(so there is chart history), then the page loads and an init script times the first
tile, all tiles, the charts' history and the full wall. --profile adds the page's CPU
profile (DevTools Protocol) as self time per function; --dashboard-dir serves another
(older) wall to tell machine noise from the wall's own cost; --query worker=0 runs the
wall's connection on the page's main thread instead of its worker (the comparison).

    python bench/browser_bench.py [--quick] [--write] [--profile]
    python bench/browser_bench.py --seconds 3600 --warmup 400 --name browser-soak --write
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import CHROMIUM_ARGS as _CHROMIUM  # noqa: E402

ARGS = [*_CHROMIUM, "--enable-precise-memory-info", "--js-flags=--expose-gc"]

PROBE = """
// Frame intervals go into a fixed histogram (0.1 ms buckets up to 2 s), not an array:
// an hour at 60 Hz would otherwise add 216,000 numbers to the very heap being measured.
// The heap sample's forced GC (every 5 s) is the bench's own main-thread work, which no
// wall does: the frame interval it falls into goes to `histAll` only (and is counted in
// gcFrames), the wall's figures come from `hist`; both are reported.
window.__bench = { hist: new Uint32Array(20001), histAll: new Uint32Array(20001), frames: 0,
                   frameSum: 0, heap: [], longTasks: 0, updates: 0, gcFrames: 0, gcAt: -1,
                   start: performance.now() };
(function loop(prev) {
  requestAnimationFrame((t) => {
    if (prev !== undefined) {
      const b = window.__bench, dt = t - prev, bucket = Math.min(20000, Math.round(dt * 10));
      b.histAll[bucket]++;
      if (b.gcAt > prev && b.gcAt <= t) b.gcFrames++;
      else {
        b.hist[bucket]++;
        b.frames++;
        b.frameSum += dt;
      }
    }
    loop(t);
  });
})();
new PerformanceObserver((l) => { window.__bench.longTasks += l.getEntries().length; })
  .observe({ type: "longtask", buffered: true });
// Long Animation Frames (frames over 50 ms, Chromium 123+), attributed: per script entry
// point (invoker and source position) its time and count, and what was not script (style,
// layout, paint, and what ran outside any script: GC, parsing). Only frames whose
// duration exceeds 33 ms are summed: those make the intervals of 50 ms and more.
window.__bench.loaf = { frames: 0, total: 0, blocking: 0, script: 0, layout: 0, scripts: {} };
try {
  new PerformanceObserver((l) => {
    const a = window.__bench.loaf;
    for (const f of l.getEntries()) {
      if (f.duration <= 33) continue;
      a.frames++;
      a.total += f.duration;
      a.blocking += f.blockingDuration;
      // rendering proper: from style and layout on (rAF callbacks are scripts, above)
      a.layout += f.styleAndLayoutStart ? f.startTime + f.duration - f.styleAndLayoutStart : 0;
      for (const s of f.scripts) {
        const where = `${s.sourceURL.split("/").pop()}:${s.sourceCharPosition}`;
        const key = `${s.invokerType} ${s.invoker} ${s.sourceFunctionName || ""} ${where}`;
        const e = (a.scripts[key] ??= { ms: 0, n: 0, layout: 0, max: 0 });
        e.ms += s.duration; e.n++; e.layout += s.forcedStyleAndLayoutDuration;
        e.max = Math.max(e.max, s.duration);
        a.script += s.duration;
      }
    }
  }).observe({ type: "long-animation-frame", buffered: false });
} catch { /* an older browser: no attribution */ }
window.gatewayClient?.addEventListener("change", (e) => {
  window.__bench.updates += e.detail.topics.size;
});
setInterval(() => {
  if (window.gc) { window.gc(); window.__bench.gcAt = performance.now(); }
  window.__bench.heap.push([(performance.now() - window.__bench.start) / 1000,
                            performance.memory.usedJSHeapSize]);
}, 5000);
"""

# From navigation on (an init script, before the page's own): when the first tile and
# all tiles show a value, and when the first and every chart of the first trend panel
# hold history (a point older than the page). Works on older walls too (--dashboard-dir),
# which had no hooks for it. Polled every 50 ms until the wall is full, or 120 s.
LOAD_PROBE = """
window.__load = { groups: 0, historyGroups: 0 };
(() => {
  const L = window.__load, since = performance.timeOrigin / 1000 - 5;
  const timer = setInterval(() => {
    const w = window.wall, now = performance.now();
    if (!w?.tilesWithValues) return;
    const c = window.gatewayClient;
    if (c && !L.hooked) {
      L.hooked = true;
      c.addEventListener("history_end", (e) => { L.historyEnd = e.detail; });
    }
    const tiles = w.tilesWithValues();
    if (tiles > 0) L.firstTile ??= now;
    if (tiles >= DEVICES) L.allTiles ??= now;
    const groups = Object.keys(w.trends()[0] || {});
    const filled = groups.filter((g) => (w.series(0, g)?.times[0] ?? Infinity) < since);
    L.groups = groups.length;
    L.historyGroups = filled.length;
    if (filled.length) L.firstHistory ??= now;
    if (groups.length && filled.length === groups.length) L.allHistory ??= now;
    if ((L.allTiles && L.allHistory) || now > 120000) {
      L.full = L.allTiles && L.allHistory ? Math.max(L.allTiles, L.allHistory) : null;
      L.done = true;
      clearInterval(timer);
    }
  }, 50);
})();
"""

# One sample a minute: the last heap-after-GC sample and the running totals, from
# which the loop derives the minute's frame average and update rate.
MINUTE = """() => { const b = window.__bench;
  return { t: (performance.now() - b.start) / 1000, heap: b.heap.at(-1)?.[1] ?? null,
           frames: b.frames, frameSum: b.frameSum, updates: b.updates }; }"""


def ms(v: float | None) -> str:
    return "never" if v is None else f"{v / 1000:.1f} s"


def describe_load(load: dict[str, object]) -> str:
    t = {k: load.get(k) for k in ("firstTile", "allTiles", "firstHistory", "allHistory", "full")}
    return (
        f"first tile {ms(t['firstTile'])}, all tiles {ms(t['allTiles'])}, chart history "
        f"first {ms(t['firstHistory'])}, all {ms(t['allHistory'])} "
        f"({load.get('historyGroups')}/{load.get('groups')} groups), full wall {ms(t['full'])}"
        f"; history asked at {ms(load.get('first_paint'))}"  # type: ignore[arg-type]
    )


def summarize_trace(trace: dict[str, Any], seconds: float) -> None:
    """Print the renderer main thread's complete events by name, outermost only."""
    events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
    main = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("name") == "thread_name" and e.get("args", {}).get("name") == "CrRendererMain"
    }
    spans: dict[str, float] = {}
    tasks: list[float] = []
    for e in events:
        if (e.get("pid"), e.get("tid")) not in main or e.get("ph") != "X":
            continue
        dur = e.get("dur", 0) / 1000
        spans[e["name"]] = spans.get(e["name"], 0.0) + dur
        if e["name"] == "RunTask":
            tasks.append(dur)
    tasks.sort()
    print(f"  trace, {seconds:g} s, renderer main thread (ms per second, by event):")
    for name, total in sorted(spans.items(), key=lambda x: -x[1])[:16]:
        print(f"    {total / seconds:7.1f}  {name}")
    if tasks:
        print(
            f"  tasks: {len(tasks)}, p99 {tasks[int(0.99 * (len(tasks) - 1))]:.1f} ms, "
            f"max {tasks[-1]:.1f} ms, over 16 ms: {sum(1 for t in tasks if t > 16)}"
        )


def self_time(profile: dict[str, Any]) -> list[tuple[tuple[str, str], float]]:
    """Share of the profile's samples per function (self time), largest first."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    counts: dict[tuple[str, str], int] = {}
    for sample in profile["samples"]:
        frame = nodes[sample]["callFrame"]
        url = frame["url"].rsplit("/", 1)[-1]
        key = (frame["functionName"], f"{url}:{frame['lineNumber'] + 1}" if url else "")
        counts[key] = counts.get(key, 0) + 1
    total = max(1, len(profile["samples"]))
    return sorted(((k, n / total) for k, n in counts.items()), key=lambda x: -x[1])


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def percentile_from_histogram(hist: list[int], q: float) -> int:
    """The bucket index holding the q-th quantile of the counts in `hist`."""
    rank = q * (sum(hist) - 1)
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen > rank:
            return i
    return len(hist) - 1


def nice_note(result: dict[str, Any]) -> str:
    nice = result.get("gateway_nice") or 0
    return f", at niceness {nice}: Chromium runs first when both want a core" if nice else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 s instead of 60 s")
    ap.add_argument("--write", action="store_true", help="rewrite docs/benchmarks.md")
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--seconds", type=int, default=None, help="run length (default 60)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="seconds excluded from the heap trend (the charts' 300 s history "
        "fills first: use more than 300 to judge the plateau)",
    )
    ap.add_argument(
        "--name",
        default="browser",
        help="results file bench/results/NAME.json and its docs/benchmarks.md section "
        "(e.g. browser-soak for the hour-long heap run)",
    )
    ap.add_argument(
        "--dashboard-dir",
        default="",
        help="serve this dashboard instead (e.g. an older one, to compare on a busy machine)",
    )
    ap.add_argument(
        "--history-wait",
        type=float,
        default=60.0,
        help="seconds the fleet runs before the page loads, so the gateway has chart "
        "history to serve (the time to a full wall includes it)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="record the page's CPU profile (DevTools Protocol Profiler) over the run and "
        "print the functions with the most self time",
    )
    ap.add_argument(
        "--trace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="record a Chromium trace (devtools.timeline) for the first SECONDS of the run "
        "and print the renderer main thread's time by event: what the frames are made of",
    )
    ap.add_argument(
        "--control",
        action="store_true",
        help="after the load, measure an empty page instead of the wall, with the same "
        "gateway and fleet running: the machine's own frame noise (a floor for the wall's)",
    )
    ap.add_argument(
        "--query",
        default="",
        help="more URL parameters for the wall, e.g. worker=0 (the connection in the page, "
        "as before the worker: the comparison in docs/benchmarks.md)",
    )
    ap.add_argument(
        "--gateway-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the gateway (and its simulated fleet) at niceness N, so that Chromium "
        "runs first when both want a core: the wall PC of the budget, which does not "
        "also serve 50,000 messages a second (the figure is reported with it)",
    )
    ap.add_argument(
        "--write-only",
        metavar="ARGS",
        default=None,
        help="write the docs section NAME from bench/results/NAME.json without running "
        "(ARGS: the command line the results came from, shown in the docs)",
    )
    args = ap.parse_args()
    if args.write_only is not None:
        from bench.report import results_path

        result = json.loads(results_path(args.name, False).read_text())
        write(result, args.name, args.write_only)
        return
    seconds = args.seconds or (20 if args.quick else 60)
    from playwright.sync_api import sync_playwright

    from bench.report import gateway_process, machine_info, results_path

    with (
        gateway_process(
            "--simulate",
            str(args.devices),
            *(["--dashboard-dir", args.dashboard_dir] if args.dashboard_dir else []),
            env={"GATEWAY_SIMULATOR_RATE_HZ": str(args.rate)},
            cpu=0,
            nice=args.gateway_nice,
        ) as gw,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.add_init_script(LOAD_PROBE.replace("DEVICES", str(args.devices)))
        time.sleep(args.history_wait)
        query = f"&{args.query}" if args.query else ""
        page.goto(f"http://127.0.0.1:{gw.port}/?rate=10{query}", timeout=120_000)
        page.wait_for_function("() => window.__load?.done", timeout=150_000, polling=500)
        load = page.evaluate("() => window.__load")
        load["history_fetch"] = page.evaluate("() => window.wall.history?.stats ?? null")
        load["history_at"] = page.evaluate("() => window.wall.historyAt?.() ?? null")
        load["first_paint"] = page.evaluate("() => window.wall.firstPaint?.() ?? null")
        load["chart_field"] = page.evaluate(
            "() => window.wall.series(0, Object.keys(window.wall.trends()[0] || {})[0])?.field"
        )
        print(f"  load: {describe_load(load)}", flush=True)
        page.wait_for_function(
            f"() => window.gatewayClient?.topics.size >= {args.devices}", timeout=120_000
        )
        if args.control:
            page.goto("about:blank")
        page.evaluate(PROBE)
        cdp = None
        if args.profile:
            cdp = page.context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 500})
            cdp.send("Profiler.start")
        print(
            f"browser: {args.devices} devices at {args.rate:g} Hz for {seconds} s ...",
            flush=True,
        )
        if args.trace:
            browser.start_tracing(page=page, categories=["devtools.timeline", "v8.execute"])
            time.sleep(args.trace)
            raw = browser.stop_tracing()
            (ROOT / "bench" / "results" / "quick").mkdir(parents=True, exist_ok=True)
            (ROOT / "bench" / "results" / "quick" / "trace.json").write_bytes(raw)
            summarize_trace(json.loads(raw), args.trace)
        deadline = time.monotonic() + seconds
        minutes: list[dict[str, float]] = []
        prev = {"t": 0.0, "frames": 0, "frameSum": 0.0, "updates": 0}
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(60.0, left))
            now = page.evaluate(MINUTE)
            if now["heap"] is None:
                continue
            frames = now["frames"] - prev["frames"]
            row = {
                "t_s": now["t"],
                "heap_mib": now["heap"] / 2**20,
                "updates_per_s": (now["updates"] - prev["updates"])
                / max(1.0, now["t"] - prev["t"]),
                "frame_avg_ms": (now["frameSum"] - prev["frameSum"]) / frames if frames else 0.0,
                "load1": os.getloadavg()[0],
            }
            prev = now
            minutes.append(row)
            print(
                f"  {row['t_s']:6.0f} s: heap after GC {row['heap_mib']:.2f} MiB, frame avg "
                f"{row['frame_avg_ms']:.1f} ms, {row['updates_per_s']:,.0f} updates/s, "
                f"load {row['load1']:.2f}",
                flush=True,
            )
        profile = cdp.send("Profiler.stop")["profile"] if cdp else None
        data = page.evaluate(
            "() => ({...window.__bench, hist: Array.from(window.__bench.hist),"
            " histAll: Array.from(window.__bench.histAll)})"
        )
        draws = sorted(page.evaluate("() => window.wall?.drawMs() ?? [0]"))
        ticks = sorted(page.evaluate("() => window.wall?.tickMs?.() ?? []")) or [0.0]
        browser.close()
    loaf = data.get("loaf") or {}
    if loaf.get("frames"):
        print(
            f"  long animation frames over 33 ms: {loaf['frames']}, {loaf['total']:.0f} ms in "
            f"all: scripts {loaf['script']:.0f} ms, rendering (style, layout, paint) "
            f"{loaf['layout']:.0f} ms, the rest (GC, parsing, other) "
            f"{loaf['total'] - loaf['script'] - loaf['layout']:.0f} ms; by script:"
        )
        for key, e in sorted(loaf["scripts"].items(), key=lambda x: -x[1]["ms"])[:12]:
            print(
                f"    {e['ms']:7.0f} ms in {e['n']:4d} (max {e['max']:4.0f}, forced layout "
                f"{e['layout']:.0f})  {key}"
            )
    if profile:
        top = self_time(profile)
        print("  self time by function (profiler samples):")
        for (fn, where), share in top[:20]:
            print(f"    {share * 100:5.1f} %  {fn or '(anonymous)'}  {where}")
    nframes = data["frames"]
    avg = data["frameSum"] / nframes
    p99 = percentile_from_histogram(data["hist"], 0.99) / 10
    p99_all = percentile_from_histogram(data["histAll"], 0.99) / 10
    heap = [(t, b) for t, b in data["heap"]]
    after_warmup = [(t, b) for t, b in heap if t >= args.warmup]
    trend = slope(after_warmup) * 3600 / 2**20  # MiB per hour
    updates = data["updates"] / seconds
    draw_avg = sum(draws) / len(draws)
    draw_p99 = draws[int(0.99 * (len(draws) - 1))]
    result = {
        "draw_avg_ms": draw_avg,
        "draw_p99_ms": draw_p99,
        "machine": machine_info(),
        "devices": args.devices,
        "rate_hz": args.rate,
        "seconds": seconds,
        "frames": nframes,
        "frame_avg_ms": avg,
        "frame_p99_ms": p99,
        "frame_p99_with_forced_gc_ms": p99_all,
        # the tail: intervals of two, three and four or more 60 Hz frames (the frames
        # holding the bench's forced GC left out), to set beside the long animation
        # frames (frames whose main-thread work took over 33 ms)
        "frame_intervals_over_ms": {str(ms): sum(data["hist"][ms * 10 :]) for ms in (20, 40, 60)},
        "forced_gc_frames": data["gcFrames"],
        "query": args.query,
        "gateway_nice": args.gateway_nice,
        "long_tasks": data["longTasks"],
        "heap_start_mib": heap[0][1] / 2**20,
        "heap_end_mib": heap[-1][1] / 2**20,
        "heap_trend_mib_per_hour": trend,
        "warmup_s": args.warmup,
        "updates_per_s": updates,
        "per_minute": minutes,
        "tick_avg_ms": sum(ticks) / len(ticks),
        "tick_max_ms": ticks[-1],
        "load": load,
        "long_animation_frames": loaf,
    }
    half = len(after_warmup) // 2
    first_half = after_warmup[:half] or heap
    second_half = after_warmup[half:] or heap
    result["heap_first_half_mean_mib"] = sum(b for _, b in first_half) / len(first_half) / 2**20
    result["heap_second_half_mean_mib"] = sum(b for _, b in second_half) / len(second_half) / 2**20
    result["heap_max_mib"] = max(b for _, b in heap) / 2**20
    out = results_path(args.name, args.quick)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "  frame intervals over 20 / 40 / 60 ms: "
        + " / ".join(str(n) for n in result["frame_intervals_over_ms"].values())
        + "\n"
        f"  frame time avg {avg:.1f} ms, p99 {p99:.1f} ms ({nframes} frames; with the "
        f"{data['gcFrames']} holding the bench's forced GC p99 {p99_all:.1f} ms; "
        f"{data['longTasks']} long tasks); heap {heap[0][1] / 2**20:.1f} -> "
        f"{heap[-1][1] / 2**20:.1f} MiB, trend {trend:+.1f} MiB/h; "
        f"{updates:,.0f} topic updates/s received; draw avg {draw_avg:.2f} ms, "
        f"p99 {draw_p99:.2f} ms; once-a-second tick avg {result['tick_avg_ms']:.1f} ms, max "
        f"{result['tick_max_ms']:.1f} ms"
    )
    if args.write:
        write(result, args.name, " ".join(sys.argv[1:]))


def write(result: dict[str, Any], name: str, argv: str) -> None:
    """docs/benchmarks.md's section NAME from a result (of this run, or --write-only)."""
    from bench.report import write_section

    seconds = result["seconds"]
    command = f"`python bench/browser_bench.py {argv}`"
    title = "Big screen in the browser"
    if name == "browser":
        command += " (`make bench` runs it with `--seconds 420 --warmup 330`)"
    else:
        title = f"Big screen in the browser, {seconds / 60:.0f} minutes"
    met = result["draw_avg_ms"] < 16 and result["frame_p99_ms"] < 50
    rows = [
        ("topic updates/s received by the page", f"{result['updates_per_s']:,.0f}"),
        (
            "frame interval (requestAnimationFrame to the next), average",
            f"**{result['frame_avg_ms']:.1f} ms**",
        ),
        ("frame interval, p99", f"**{result['frame_p99_ms']:.1f} ms**"),
        (
            "frame interval, p99 with the frames holding the bench's forced GC "
            f"({result.get('forced_gc_frames', '?')})",
            f"{result.get('frame_p99_with_forced_gc_ms', float('nan')):.1f} ms",
        ),
        ("the page's work per frame (draw), average", f"**{result['draw_avg_ms']:.2f} ms**"),
        ("the page's work per frame (draw), p99", f"**{result['draw_p99_ms']:.2f} ms**"),
        ("long tasks (> 50 ms)", str(result["long_tasks"])),
        (
            "JS heap after GC, first and last sample",
            f"{result['heap_start_mib']:.1f} → {result['heap_end_mib']:.1f} MiB",
        ),
        (
            f"heap trend after a {result['warmup_s']} s warm-up",
            f"{result['heap_trend_mib_per_hour']:+.1f} MiB per hour",
        ),
        (
            "heap mean after the warm-up, first half → second half",
            f"{result['heap_first_half_mean_mib']:.2f} → "
            f"{result['heap_second_half_mean_mib']:.2f} MiB",
        ),
        ("heap maximum", f"{result['heap_max_mib']:.2f} MiB"),
    ]
    load = result.get("load")
    if load:
        fetch = load.get("history_fetch") or {}
        rows += [
            ("after load: first tile with a value", ms(load.get("firstTile"))),
            (f"after load: all {result['devices']:,} tiles", ms(load.get("allTiles"))),
            ("after load: chart history asked", ms(load.get("first_paint"))),
            (
                "after load: **full wall** (every tile, every chart with history)",
                f"**{ms(load.get('full'))}**",
            ),
            (
                "chart history fetched",
                f"{fetch.get('requests', '?')} requests, {fetch.get('bytes', 0) / 1024:.0f} KiB",
            ),
        ]
    minutes = result.get("per_minute") or []
    if minutes:
        loads = [m["load1"] for m in minutes]
        rows.append(
            (
                "load average (1 min) during the run, min to max",
                f"{min(loads):.1f} to {max(loads):.1f}",
            )
        )
    table = "| measure | value |\n|---|---:|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    body = (
        f"Command: {command}. A gateway with "
        f"{result['devices']:,} simulated devices at {result['rate_hz']:g} messages/s each "
        f"(pinned to CPU 0{nice_note(result)}), the dashboard at 1920x1080 in headless "
        f"Chromium (Debian's, via Playwright), {seconds} s, measured in the page with the "
        f"Performance API.\n\n"
        f"{table}\n"
        f"Targets: average frame time under 16 ms and p99 under 50 ms: "
        f"**{'met' if met else 'NOT met'}** (the frame interval cannot go below the 16.7 ms "
        f"of a 60 Hz display, so the average is the page's own work per frame; the p99 is "
        f"the interval: what a viewer sees as a stutter). "
        f"The updates received show the load the page really had: the in-process simulator "
        f"shares one core with the gateway and may not reach "
        f"{result['devices'] * result['rate_hz']:,.0f} messages/s."
    )
    if len(minutes) >= 10:
        body += (
            "\n\nThe heap after a forced GC, one sample every 5 minutes (every minute in "
            f"`bench/results/{name}.json`), with the minute's frame average, the updates "
            "the page received and the machine's load:\n\n"
            "| minute | heap | frame avg | updates/s | load |\n|---:|---:|---:|---:|---:|\n"
        )
        for k, m in enumerate(minutes):
            if k % 5 == 0 or k == len(minutes) - 1:
                body += (
                    f"| {m['t_s'] / 60:.0f} | {m['heap_mib']:.2f} MiB | "
                    f"{m['frame_avg_ms']:.1f} ms | {m['updates_per_s']:,.0f} | "
                    f"{m['load1']:.1f} |\n"
                )
    write_section(ROOT / "docs" / "benchmarks.md", name, title, body)
    print("docs/benchmarks.md updated")


if __name__ == "__main__":
    main()
