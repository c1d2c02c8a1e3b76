// Trend charts: one small chart per group (small multiples), each with its own y scale,
// so one outlier group does not flatten the others. Each shows the group's average
// (thick) and min and max (thin) of one field, sampled once a second into fixed-size
// ring buffers (HISTORY points: memory stays flat); the unit is on the y axis and the
// title carries the latest values (the legend that shows values). A sample the wall
// cannot vouch for (disconnected past the grace period, or no device reporting) is
// null: uPlot draws a gap, never a line through an outage.

import uPlot from "../node_modules/uplot/dist/uPlot.esm.js";

export const HISTORY = 300;

class Ring {
  constructor(n) { this.a = new Array(n).fill(null); this.n = n; this.len = 0; this.i = 0; }
  push(v) { this.a[this.i] = v; this.i = (this.i + 1) % this.n; this.len = Math.min(this.len + 1, this.n); }
  values() {
    const out = new Array(this.len);
    for (let k = 0; k < this.len; k++) out[k] = this.a[(this.i - this.len + k + this.n) % this.n];
    return out;
  }
}

export class TrendPanel {
  constructor(el, { meta, field, level = 1, groups = null, max = 6, title = "" }) {
    this.el = el;
    this.meta = meta;
    this.fieldSpec = field || "auto";
    this.level = level;
    this.only = groups;
    this.max = max;
    this.field = null;
    this.sampled = null; // group -> [devices asked, devices] when its history is a sample
    this.prefilledAt = null; // performance.now() of the history's arrival
    this.times = new Ring(HISTORY);
    this.series = new Map(); // group -> {avg, min, max: Ring}
    this.cells = new Map(); // group -> {el, title, plot}
    el.classList.add("trends");
    this.heading = document.createElement("h2");
    this.body = document.createElement("div");
    this.body.className = "multiples";
    this.note = document.createElement("p");
    this.note.className = "note";
    el.append(this.heading, this.body, this.note);
    this.titleText = title;
  }

  // One sample: `rows` iterates [topic, st, state] of the devices; `honest` false when
  // the wall cannot vouch for its data (all samples null).
  sample(field, rows, honest, override = false) {
    const f = this.fieldSpec === "auto" || override ? field : this.fieldSpec;
    if (f !== this.field) { // another field: its own history, from the gateway when it has any
      this.field = f;
      this.times = new Ring(HISTORY);
      this.series.clear();
      this.sampled = null;
      if (f) this.meta.history(f, this.level).then((h) => this._prefill(f, h));
    }
    const agg = new Map();
    if (honest && f) {
      for (const [topic, st, state] of rows) {
        if (state === "offline" || state === "unknown") continue;
        const v = st.fields[f];
        if (typeof v !== "number") continue;
        const g = this.meta.group(topic, this.level);
        if (this.only && !this.only.includes(g)) continue;
        let a = agg.get(g);
        if (!a) agg.set(g, (a = [0, 0, Infinity, -Infinity]));
        a[0] += v; a[1] += 1;
        if (v < a[2]) a[2] = v;
        if (v > a[3]) a[3] = v;
      }
    }
    this.times.push(Date.now() / 1000);
    for (const g of agg.keys()) {
      if (!this.series.has(g)) {
        const s = { avg: new Ring(HISTORY), min: new Ring(HISTORY), max: new Ring(HISTORY) };
        for (let k = 1; k < this.times.len; k++) { s.avg.push(null); s.min.push(null); s.max.push(null); }
        this.series.set(g, s);
      }
    }
    for (const [g, s] of this.series) {
      const a = agg.get(g);
      s.avg.push(a ? a[0] / a[1] : null);
      s.min.push(a ? a[2] : null);
      s.max.push(a ? a[3] : null);
    }
    this.render();
  }

  // History served for (field, level): {times: [...], groups: {name: {avg, min, max}}}
  // (arrays aligned with times). Goes before the live samples already taken (those
  // newer than the history's last bucket are kept after it).
  _prefill(field, h) {
    if (!h || field !== this.field) return;
    this.sampled = h.sampled || {};
    this.prefilledAt = performance.now();
    const last = h.times[h.times.length - 1];
    const liveT = this.times.values();
    const live = new Map([...this.series].map(([g, s]) => [g, { avg: s.avg.values(), min: s.min.values(), max: s.max.values() }]));
    const keep = liveT.map((t, k) => (t > last ? k : -1)).filter((k) => k >= 0);
    const hist = h.times.slice(-(HISTORY - keep.length));
    const n = hist.length;
    this.times = new Ring(HISTORY);
    for (const t of hist) this.times.push(t);
    for (const k of keep) this.times.push(liveT[k]);
    this.series.clear();
    for (const g of new Set([...Object.keys(h.groups), ...live.keys()])) {
      if (this.only && !this.only.includes(g)) continue;
      const rings = { avg: new Ring(HISTORY), min: new Ring(HISTORY), max: new Ring(HISTORY) };
      for (const x of ["avg", "min", "max"]) {
        const hs = h.groups[g]?.[x].slice(-n) || new Array(n).fill(null);
        for (const v of hs) rings[x].push(v);
        for (const k of keep) rings[x].push(live.get(g)?.[x][k] ?? null);
      }
      this.series.set(g, rings);
    }
    this.render();
  }

  render() {
    const unit = this.meta.unit(this.field);
    const label = this.field ? this.meta.fieldLabel(this.field) : "no numeric field yet";
    this.heading.textContent = this.titleText || `${label}${unit ? ` (${unit})` : ""} by group: average, min, max`;
    const groups = [...this.series.keys()].sort();
    const shown = groups.slice(0, this.max);
    const notes = [];
    if (groups.length > shown.length) notes.push(`${groups.length - shown.length} more groups not charted (max ${this.max})`);
    // a big group's past is a sample of its devices (history.js): said, not hidden
    const sampled = shown.filter((g) => this.sampled?.[g]);
    if (sampled.length) {
      const [n, of] = this.sampled[sampled[0]];
      notes.push(`history before load: a sample (${n} of ${of} devices${sampled.length > 1 ? " per group" : ""})`);
    }
    const note = notes.join("; ");
    if (this.note.textContent !== note) this.note.textContent = note;
    for (const [g, c] of this.cells) {
      if (!shown.includes(g)) { c.plot?.destroy(); c.el.remove(); this.cells.delete(g); }
    }
    const cols = shown.length <= 3 ? 1 : shown.length <= 8 ? 2 : 3;
    this.body.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    const t = this.times.values();
    for (const g of shown) {
      let c = this.cells.get(g);
      if (!c) {
        const el = document.createElement("div");
        el.className = "multiple";
        const title = document.createElement("h4");
        const range = document.createElement("small");
        const box = document.createElement("div");
        box.className = "plot";
        el.append(title, box);
        this.body.append(el);
        c = { el, title, range, box, plot: null };
        this.cells.set(g, c);
        new ResizeObserver(() => c.plot?.setSize(size(box))).observe(box);
      }
      c.el.style.order = String(shown.indexOf(g));
      const s = this.series.get(g);
      const avg = s.avg.values(), mn = s.min.values(), mx = s.max.values();
      const last = avg.at(-1);
      const fmt = (v) => this.meta.format(this.field, v);
      const name = g.slice(g.lastIndexOf("/") + 1);
      c.title.textContent = last == null ? `${name}: no data` : `${name}  ${fmt(last)}${unit ? ` ${unit}` : ""}`;
      c.range.textContent = last == null ? "" : `  ${fmt(mn.at(-1))} – ${fmt(mx.at(-1))}`;
      c.title.append(c.range);
      // one chart per animation frame: a second's redraws never pile into one long task
      const data = [t, avg, mn, mx];
      c.data = data;
      if (!c.pending) {
        c.pending = true;
        later(() => {
          c.pending = false;
          if (this.cells.get(g) !== c) return;
          if (!c.plot) c.plot = new uPlot(opts(c.box, unit, (v) => fmt(v)), c.data, c.box);
          else c.plot.setData(c.data);
        });
      }
    }
  }

  // The latest averages, for tests: {group: avg or null}
  latest() {
    return Object.fromEntries([...this.series].map(([g, s]) => [g, s.avg.values().at(-1) ?? null]));
  }

  // One group's series, for tests: {field, times, avg, min, max}
  seriesOf(group) {
    const s = this.series.get(group);
    return s ? { field: this.field, times: this.times.values(), avg: s.avg.values(),
                 min: s.min.values(), max: s.max.values() } : null;
  }
}

// Chart redraws, one per animation frame
const queue = [];
function later(fn) {
  queue.push(fn);
  if (queue.length === 1) requestAnimationFrame(next);
}
function next() {
  queue.shift()();
  if (queue.length) requestAnimationFrame(next);
}

function size(box) {
  return { width: Math.max(60, box.clientWidth), height: Math.max(40, box.clientHeight) };
}

function opts(box, unit, fmt) {
  // uPlot draws axis text on its canvas in pixels: scale it with the root font size
  const px = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
  const font = `${Math.round(px * 0.8)}px system-ui, sans-serif`;
  const axis = { stroke: "#aab6c4", grid: { stroke: "#1c2530" }, ticks: { stroke: "#1c2530" }, font };
  return {
    ...size(box),
    legend: { show: false },
    cursor: { show: false },
    series: [{}, { stroke: "#56b4e9", width: Math.max(2, px / 8), points: { show: false } },
             { stroke: "#8b98a8", width: 1, dash: [4, 4], points: { show: false } },
             { stroke: "#8b98a8", width: 1, dash: [4, 4], points: { show: false } }],
    axes: [{ ...axis, space: px * 5, size: px * 1.5,
             values: (u, splits) => splits.map((v) => new Date(v * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })) },
           { ...axis, space: px * 2, size: px * 4.5,
             values: (u, splits) => splits.map((v) => `${fmt(v)}${unit ? ` ${unit}` : ""}`) }],
  };
}
