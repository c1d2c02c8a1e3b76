"""Tables and plots of bench/scaling_bench.py's results (docs/benchmarks.md, docs/img/).

The plots are PNGs drawn with matplotlib (the ``bench`` extra): one figure per sweep
(screens, devices), one line per server, the panels data age p50/p99, server CPU, RSS
and bytes per screen. A point the machine could not hold is drawn hollow; a server
that fell behind has no age point there (its age grows without bound) and is marked
with a cross on the age panel.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent

NAMES = {
    "ours": "ours (gateway)",
    "coalesce": "coalescing `websockets` peer",
    "naive": "naive `broadcast()` peer",
    "mqtt": "screens on mosquitto (MQTT)",
}
PLAIN = {"ours": "ours", "coalesce": "coalescing peer", "naive": "naive peer", "mqtt": "MQTT"}
NONE = "n/a"
#: screens that parse what they receive, over all the load generator's processes, and
#: the share of their values whose age they take (bench/e2e_clients.py)
SAMPLED = 20
AGE_STEP = 4
COLORS = {"ours": "tab:blue", "coalesce": "tab:orange", "naive": "tab:red", "mqtt": "tab:green"}


def key(peer: str, devices: int, screens: int, deadbands: bool, deflate: bool) -> str:
    return (
        f"{peer}|{devices}|{screens}|{'db' if deadbands else 'nodb'}|{'z' if deflate else 'plain'}"
    )


def fell_behind(r: dict[str, Any]) -> bool:
    return (
        not r.get("values_sampled")
        or (r.get("age_growth_ms_per_s") or 0) > 100
        or r.get("closed", 0) > r["screens"] // 10
    )


def per_screen(r: dict[str, Any]) -> float:
    by = r.get("bytes_per_s_by_filter") or {}
    return sum(by.values()) / len(by) if by else 0.0


def age(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    if "error" in r:
        return f"run failed: {r['error'][:80]}"
    if not r.get("values_sampled"):
        return "no value arrived"
    if (r.get("age_growth_ms_per_s") or 0) > 100:
        series = list(r["age_max_by_second_ms"].values())
        return f"falls behind: {series[0] / 1000:.1f} s → {series[-1] / 1000:.1f} s"
    return f"{r['age_p50_ms']:.0f} / {r['age_p99_ms']:.0f} / {r['age_max_ms']:.0f} ms"


def lag(x: dict[str, Any] | None) -> str:
    if not x:
        return NONE
    bound = "" if x.get("exact_max") else "≤ "

    def one(v: float) -> str:
        return f"{bound}{ms(v)} ms" if math.isfinite(v) else "> 10 s"

    return f"{one(x['p99_ms'])} / {one(x['max_ms'])}"


def ms(v: float) -> str:
    if not math.isfinite(v):
        return "> 10,000"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def wait(r: dict[str, Any]) -> str:
    v = r.get("server_cpu_wait")
    return NONE if v is None else f"{v:.0%}"


def work_cell(r: dict[str, Any]) -> str:
    w = r.get("work")
    return NONE if not w else f"{w['messages_per_s']:,.0f} / {w['frames_per_s']:,.0f}"


def per_frame(r: dict[str, Any]) -> str:
    v = r.get("cpu_us_per_frame")
    return NONE if v is None else f"{v:,.1f} µs"


def cores(v: float | None) -> str:
    return NONE if v is None else f"{v:.2f}"


def rss(r: dict[str, Any]) -> str:
    s = r.get("server_rss_mib") or []
    return f"{s[0]:.0f} → {s[-1]:.0f} MiB" if s else NONE


def join_time(r: dict[str, Any]) -> str:
    j = r.get("join") or {}
    if not j.get("tracked"):
        return "no snapshot (the peer has none)" if r.get("peer") in ("naive", "mqtt") else NONE
    if j.get("never"):
        return f"{j['never']:,} of {j['tracked']:,} screens never within {j['window_s']:.0f} s"
    return f"{j['p50_s']:.2f} / {j['p99_s']:.2f} / {j['all_s']:.2f} s"


def held(r: dict[str, Any]) -> str:
    h = r.get("held")
    if h is None:
        return NONE
    tries = f" (best of {r['tries']} runs)" if r.get("tries") else ""
    if not h:
        return "yes" + tries
    return "**no**: " + "; ".join(h) + tries


def load(r: dict[str, Any]) -> str:
    la = r.get("load_average")
    return f"{la[0]:.1f} / {la[1]:.1f}" if la else NONE


def kib(v: float) -> str:
    return f"{v / 1024:,.1f}" if v < 10 * 1024 else f"{v / 1024:,.0f}"


# -- tables --------------------------------------------------------------------------------


def reference(res: dict[str, Any]) -> str:
    runs = res["runs"]
    d, s = res["plan"]["ref"]
    cols = []
    for db, z in ((False, True), (True, True), (False, False)):
        for peer in ("ours", "coalesce", "naive", "mqtt"):
            r = runs.get(key(peer, d, s, db, z))
            if r is not None:
                cols.append((peer, db, z, r))
    head = "| | " + " | ".join(
        f"{PLAIN[p]}, deadbands {'on' if db else 'off'}"
        + ("" if p == "mqtt" else f", {'deflate' if z else 'no compression'}")
        for p, db, z, _ in cols
    )
    rows = [
        head + " |",
        "|---|" + "---:|" * len(cols),
    ]

    def row(label: str, fn: Any) -> None:
        rows.append(f"| {label} | " + " | ".join(fn(r) for *_, r in cols) + " |")

    ok = [c for c in cols if "skipped" not in c[3] and "error" not in c[3]]
    if len(ok) < len(cols):
        row("run", lambda r: r.get("skipped") or r.get("error", "")[:60] or "ok")
    row("data age p50 / p99 / max (steady)", age)
    row("server CPU, cores (MQTT peer: mosquitto)", lambda r: cores(r.get("server_cpu_cores")))
    row("mosquitto CPU, cores", lambda r: cores(r.get("broker_cpu_cores")))
    row("server waited for a CPU: thread-seconds per second (other work on the machine)", wait)
    row(
        "server's work: device messages handled / frames handed to sockets, per second",
        work_cell,
    )
    row("server CPU per frame handed to a socket", per_frame)
    row("server RSS, start → end of the steady window", rss)
    row(
        "bytes received per screen per second (`#` / site), KiB",
        bytes_cell,
    )
    row("frames per second per screen", lambda r: f"{r.get('messages_per_s_per_sampled', 0):,.1f}")
    row("loop lag p99 / max (steady)", lambda r: lag(r.get("looplag")))
    row("join: screens holding their snapshot, p50 / p99 / all (s after the wave)", join_time)
    row("join: loop lag p99 / max", lambda r: lag((r.get("join") or {}).get("looplag")))
    row(
        "join: bytes per screen",
        lambda r: (
            f"{kib((r.get('join') or {}).get('bytes_per_screen', 0))} KiB"
            if (r.get("join") or {}).get("tracked")
            else NONE
        ),
    )
    row(
        "screens connected / dropped",
        lambda r: f"{r.get('subscribed', 0):,} / {r.get('closed', 0)}",
    )
    row(
        "device messages into the broker per second",
        lambda r: f"{r['input_per_s']:,.0f}" if r.get("input_per_s") else NONE,
    )
    row("load side CPU (screens + fleet), cores", lambda r: cores(load_side(r)))
    row("`uptime` load at start / end", load)
    row("the machine held the point", held)
    return "\n".join(rows)


def bytes_cell(r: dict[str, Any]) -> str:
    by = r.get("bytes_per_s_by_filter")
    if not by:
        return NONE
    return f"{kib(per_screen(r))} ({' / '.join(kib(v) for v in by.values())})"


def load_side(r: dict[str, Any]) -> float | None:
    if r.get("load_cpu_cores") is None:
        return None
    return r["load_cpu_cores"] + (r.get("fleet_cpu_cores") or 0)


def sweep_table(res: dict[str, Any], which: str) -> str:
    runs = res["runs"]
    p = res["plan"]
    if which == "screens":
        d, sizes = p["screens"]
        points = [(d, s) for s in sizes]
        first = "screens"
    else:
        sizes, s = p["devices"]
        points = [(d, s) for d in sizes]
        first = "devices"
    rows = [
        f"| {first} | server | data age p50 / p99 / max | CPU (cores) | CPU waited | CPU per frame "
        "| RSS | KiB/s per screen | loop lag p99 / max "
        "| join: p50 / p99 / all holding the snapshot | load | held |",
        "|---:|---|---|---:|---:|---:|---|---:|---|---|---|---|",
    ]
    for d, s in points:
        for peer in ("ours", "coalesce", "naive", "mqtt"):
            r = runs.get(key(peer, d, s, False, True))
            if r is None:
                continue
            n = s if which == "screens" else d
            if "skipped" in r or "error" in r:
                rows.append(f"| {n:,} | {PLAIN[peer]} | {age(r)} | | | | | | | | | |")
                continue
            rows.append(
                f"| {n:,} | {PLAIN[peer]} | {age(r)} | {cores(r.get('server_cpu_cores'))} "
                f"| {wait(r)} | {per_frame(r)} | {rss(r)} | {kib(per_screen(r))} "
                f"| {lag(r.get('looplag'))} "
                f"| {join_time(r)} | {load(r)} | {held(r)} |"
            )
    return "\n".join(rows)


def join_table(res: dict[str, Any]) -> str:
    runs = res["runs"]
    d = res["plan"]["screens"][0]
    s = res["plan"]["join"]
    rows = [
        "| server | screens holding their snapshot, p50 / p99 / all (s after the first "
        "connect) | loop lag p99 / max during the wave | bytes per screen during the wave "
        "| server CPU during the wave | server RSS peak | load |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for peer in ("ours", "coalesce", "naive", "mqtt"):
        r = runs.get(key(peer, d, s, False, True))
        if r is None:
            continue
        if "skipped" in r or "error" in r:
            rows.append(f"| {PLAIN[peer]} | {age(r)} | | | | | |")
            continue
        j = r.get("join") or {}
        rows.append(
            f"| {PLAIN[peer]} | {join_time(r)} | {lag(j.get('looplag'))} "
            f"| {kib(j['bytes_per_screen']) + ' KiB' if j.get('tracked') else NONE} "
            f"| {cores(j.get('server_cpu_cores'))} "
            f"| {str(j.get('rss_mib_max')) + ' MiB' if j.get('rss_mib_max') else NONE} "
            f"| {load(r)} |"
        )
    return "\n".join(rows)


# -- plots ---------------------------------------------------------------------------------


def plot(res: dict[str, Any], which: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    p = res["plan"]
    if which == "screens":
        d, sizes = p["screens"]
        points = [(d, s) for s in sizes]
        xlabel = f"screens (10 Hz; {d:,} devices at 1 Hz)"
    else:
        sizes, s = p["devices"]
        points = [(d, s) for d in sizes]
        xlabel = f"devices at 1 Hz ({s:,} screens at 10 Hz)"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [
        (axes[0][0], "data age at the screen (ms)", None),
        (axes[0][1], "server CPU (cores)", lambda r: r.get("server_cpu_cores")),
        (
            axes[1][0],
            "server RSS at the end (MiB)",
            lambda r: (r.get("server_rss_mib") or [None])[-1],
        ),
        (axes[1][1], "bytes per screen (KiB/s)", lambda r: per_screen(r) / 1024),
    ]
    for peer in ("ours", "coalesce", "naive", "mqtt"):
        xs, rs = [], []
        for d, s in points:
            r = runs.get(key(peer, d, s, False, True))
            if r is None or "skipped" in r or "error" in r:
                continue
            xs.append(s if which == "screens" else d)
            rs.append(r)
        if not rs:
            continue
        color = COLORS[peer]
        label = PLAIN[peer]
        # data age: p50 dashed, p99 solid; a server that fell behind gets a cross
        ok = [(x, r) for x, r in zip(xs, rs, strict=True) if not fell_behind(r)]
        ax = axes[0][0]
        if ok:
            ax.plot([x for x, _ in ok], [r["age_p99_ms"] for _, r in ok], "-o", color=color,
                    label=f"{label} p99")  # fmt: skip
            ax.plot([x for x, _ in ok], [r["age_p50_ms"] for _, r in ok], "--", color=color,
                    alpha=0.7, label=f"{label} p50")  # fmt: skip
        behind = [x for x, r in zip(xs, rs, strict=True) if fell_behind(r)]
        if behind:
            ax.plot(behind, [30_000] * len(behind), "x", color=color, markersize=10,
                    label=f"{label}: falls behind")  # fmt: skip
        for ax, _title, fn in panels[1:]:
            pts = [(x, fn(r)) for x, r in zip(xs, rs, strict=True) if fn(r) is not None]
            if not pts:
                continue
            ax.plot([x for x, _ in pts], [y for _, y in pts], "-", color=color, label=label)
            for (x, y), r in zip(pts, [r for r in rs if fn(r) is not None], strict=True):
                hollow = bool(r.get("held"))
                ax.plot([x], [y], "o", color=color, mfc="white" if hollow else color)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ticks = [s if which == "screens" else d for d, s in points]
    for ax, title, _ in panels:
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_yscale("log")
    axes[1][1].set_yscale("log")
    for ax in (axes[0][0], axes[1][1]):
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
        )
    axes[0][0].legend(fontsize=7)
    axes[0][1].legend(fontsize=7)
    loads = [x for r in runs.values() for x in (r.get("load_average") or [])]
    span = f"; uptime load {min(loads):.0f} to {max(loads):.0f}" if loads else ""
    fig.suptitle(
        f"Scaling by {which} (hollow markers: the machine could not hold the point; "
        f"2 cores, shared{span}: times and CPU are upper bounds)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- docs ----------------------------------------------------------------------------------


def setup(res: dict[str, Any]) -> str:
    return (
        "Command: `make bench` (`python bench/scaling_bench.py --write"
        + (f" --seconds {res['seconds']:g}" if res["seconds"] != 20 else "")
        + "`). Each run: a real mosquitto, `devices-sim` publishing every device at 1 "
        "message/s, one server, then the screens (10 Hz, half on `#`, half on one site: a "
        "quarter of the fleet) connect all at once. Every server reads the same MQTT input; "
        "deadbands for all or for none (the MQTT peer has none to apply); compression as "
        "each offers it to a browser (permessage-deflate for ours and both `websockets` "
        "peers; MQTT has none). Bytes are counted at the screens' sockets (on the wire, "
        "WebSocket or MQTT framing included). The **join** window runs from the first "
        "connect until every screen holds a snapshot of all its topics (when the bytes "
        "that complete it arrived: the screens count the snapshot items when their "
        "process is idle, so that inflating 2,000 snapshots does not time the load "
        "generator); the **steady** "
        f"window ({res['seconds']:g} s) starts after the join's time budget. Data age: "
        "receipt at the screen minus the device's own timestamp, from about "
        f"{SAMPLED} sampled screens (both filters alike), one value in {AGE_STEP} (in "
        "earlier runs every value of one screen in 25: at 1,000 screens and more that "
        "parsing took the load generator's core). Loop lag: ours from "
        "`gateway_event_loop_lag_seconds` on /metrics "
        "(bucket bounds, hence ≤; a window's scrapes are 1 s apart), the `websockets` "
        "peers from a 10 ms sleeper of their own (exact). Servers on CPU 0; fleet, screens "
        "and mosquitto (except for the MQTT peer, where it is the server) on CPU 1. The "
        "machine (2 cores) is shared with other work: times and CPU are **upper bounds**, "
        "with `uptime`'s load at the start and end of each run; a point is marked *not "
        "held* when the load side saturated its core, the fleet missed its rate or screens "
        "did not connect. A server that falls behind is shown by how the age of what it "
        "delivers grows; ours runs at every point, a peer that fell behind is not run at larger "
        "points of the same sweep." + run_on(res) + verdict(res) + targets(res)
    )


def verdict(res: dict[str, Any]) -> str:
    """How much of this run the machine held, said before any figure is read."""
    measured = [r for r in res["runs"].values() if "held" in r]
    if not measured:
        return ""
    held_n = sum(not r["held"] for r in measured)
    waits = [r["server_cpu_wait"] for r in measured if r.get("server_cpu_wait") is not None]
    got = [r["server_cpu_cores"] for r in measured if r.get("server_cpu_cores") is not None]
    loads = [x for r in measured for x in r.get("load_average") or []]
    text = f"\n\n**This run: the machine held {held_n} of {len(measured)} measured points.**"
    if held_n < len(measured) and waits and got and loads:
        text += (
            f" `uptime` load {min(loads):.0f} to {max(loads):.0f} on 2 cores; the servers got "
            f"{min(got):.2f} to {max(got):.2f} of a core and waited for a CPU "
            f"{min(waits):.0%} to {max(waits):.0%} of the time (thread-seconds per second). "
            "Where a point is not held, its figures show the machine more than the server: a "
            "starved server falls behind, sends fewer and larger frames and holds a backlog."
        )
    return text


def targets(res: dict[str, Any]) -> str:
    """The gateway's targets, each judged on its own point, or said to be not shown."""
    runs = res["runs"]

    def judge(r: dict[str, Any] | None, ok: Any, figure: Any) -> str:
        if r is None or "held" not in r:
            return "not measured in this run"
        if r["held"]:
            return f"**not shown**: the machine did not hold the point (measured: {figure(r)})"
        return f"{'**met**' if ok(r) else '**NOT met**'} ({figure(r)})"

    def p99(r: dict[str, Any]) -> str:
        return age(r)

    lines = []
    d, sizes = res["plan"]["screens"]
    s4000 = 4_000 if 4_000 in sizes else sorted(sizes)[-2 if len(sizes) > 1 else 0]
    r = runs.get(key("ours", d, s4000, False, True))
    lines.append(
        f"{s4000:,} screens on {d:,} devices with p99 data age ≤ 150 ms: "
        + judge(r, lambda r: not fell_behind(r) and r["age_p99_ms"] <= 150, p99)
    )
    sizes_d, s = res["plan"]["devices"]
    dd = 50_000 if 50_000 in sizes_d else sorted(sizes_d)[-1]
    r = runs.get(key("ours", dd, s, False, True))
    lines.append(
        f"{dd:,} devices with {s:,} screens, p99 data age ≤ 250 ms: "
        + judge(r, lambda r: not fell_behind(r) and r["age_p99_ms"] <= 250, p99)
    )
    r = runs.get(key("ours", d, res["plan"]["join"], False, True))

    def wave_ok(r: dict[str, Any]) -> bool:
        j = r.get("join") or {}
        lag_ok = (j.get("looplag") or {}).get("p99_ms", math.inf) <= 10
        return bool(j.get("all_s") is not None and j["all_s"] <= 2 and lag_ok)

    lines.append(
        f"a join wave of {res['plan']['join']:,} screens, every one holding its snapshot "
        "within 2 s with loop lag p99 ≤ 10 ms: "
        + judge(r, wave_ok, lambda r: f"{join_time(r)}; loop lag {lag(r['join'].get('looplag'))}")
    )
    return "\n\nTargets for ours: " + "; ".join(lines) + "."


def run_on(res: dict[str, Any]) -> str:
    m = res.get("machine") or {}
    when = f", finished {res['finished']}" if res.get("finished") else ""
    rev = f"; gateway code of {res['gateway_commit']}" if res.get("gateway_commit") else ""
    return f" Run on: {m.get('cpu', 'unknown')}, {m.get('cores', '?')} cores{when}{rev}."


def write(
    res: dict[str, Any],
    *,
    quick: bool,
    docs: pathlib.Path | None = None,
    img: pathlib.Path | None = None,
) -> None:
    from bench.report import write_section

    if img is None:
        img = ROOT / ("bench/results/quick/img" if quick else "docs/img")
    if docs is None and not quick:
        docs = ROOT / "docs" / "benchmarks.md"
    plot(res, "screens", img / "scaling-screens.png")
    plot(res, "devices", img / "scaling-devices.png")
    d, s = res["plan"]["ref"]
    sections = [
        (
            "scaling-reference",
            f"End to end: {d:,} devices, {s:,} screens, every server under the same configuration",
            setup(res) + "\n\n" + reference(res),
        ),
        (
            "scaling-screens",
            "Scaling by screens",
            f"![scaling by screens](img/scaling-screens.png)\n\n{sweep_table(res, 'screens')}",
        ),
        (
            "scaling-devices",
            "Scaling by devices",
            f"![scaling by devices](img/scaling-devices.png)\n\n{sweep_table(res, 'devices')}",
        ),
        (
            "join-wave",
            f"Join wave: {res['plan']['join']:,} screens at once",
            f"From the screens sweep's {res['plan']['join']:,}-screen runs "
            f"({res['plan']['screens'][0]:,} devices): the wave is measured on its own.\n\n"
            + join_table(res),
        ),
    ]
    target = docs or (ROOT / "bench" / "results" / "quick" / "benchmarks.md")
    for k, title, body in sections:
        write_section(target, k, title, body)
    print(f"tables: {target}; plots: {img}", flush=True)


def finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)
