// The device grid panel: devices grouped by a topic level, one canvas per group (thousands
// of DOM tiles cost the renderer too much restyling at 10 Hz), blocks placed by
// layout.js, and an accessible text mirror of every tile (a visually hidden list:
// group, name, field, value, unit, state) that screen readers and the tests read.
//
// Rules: updates only mark tiles dirty; `drawSome(budget)` paints dirty tiles within a
// time budget per frame; a tile whose look did not change is not repainted; the mirror
// row of a tile is rewritten at once when its state changes and new values in one pass
// every MIRROR_VALUE_MS (the DOM work stays bounded with 10,000 devices at 10 Hz).

import { planLayout, tileGap } from "./layout.js";
import { STATE_COLOURS, frameWidth, paintShape, sequential, inkOn } from "./colour.js";

// Where a wide tile's two lines go (name above, value below), inside the frame its
// state draws: {pad (left and right), nameY, small, valueY, big}, relative to the tile.
export function labelLayout(w, h, inset = 0) {
  const pad = Math.max(h * 0.12, inset + 1);
  const inner = h - 2 * pad; // the lines share what the frame leaves
  const small = Math.round(Math.min(h * 0.27, inner * 0.4));
  const big = Math.round(Math.min(h * 0.38, inner * 0.56));
  return { pad, nameY: pad, small, valueY: h - pad - big, big };
}

// Text changes cost the browser accessibility and style work after the budgeted code
// that makes them (measured: a 5,000-tile pass every 5 s made ~28 long tasks in 20 s):
// state changes are mirrored at once, new values in one pass every 5 s, or every 10 ms
// per tile for large fleets (50 s with 5,000 tiles). A pass is spread over frames at a
// fixed row rate (MIRROR_ROWS_PER_FRAME, or enough to end within half the pass window),
// never written in one burst: the browser's work after a burst of thousands of text
// changes is what made the long frames (bench: p99 50 ms with bursts, 33 ms without).
const MIRROR_VALUE_MS = 5000;
const MIRROR_MS_PER_TILE = 10;
const MIRROR_ROWS_PER_FRAME = 16;
const MIRROR_NOW_ROWS_PER_FRAME = 64; // state changes: at once for a few, spread for thousands

export class DeviceGrid {
  constructor(el, { meta, level = 1, stateOf, valueOf, tOf, onLayout = () => {} }) {
    this.el = el;
    this.meta = meta;
    this.level = level;
    this.stateOf = stateOf; // topic -> state name
    this.valueOf = valueOf; // topic -> {value, text, unit}
    this.tOf = tOf; // value -> [0, 1] on the colour scale, or null: colour by state
    this.onLayout = onLayout;
    this.tiles = new Map(); // topic -> tile
    this.groups = new Map(); // name -> {el, canvas, ctx, list, head}
    this.dirty = new Set();
    this.mirrorNow = new Set(); // tiles whose state changed: mirrored in the next frame
    this.mirrorDirty = new Set(); // tiles with a new value: mirrored in the next pass
    this.mirrorPass = null; // iterator of the pass under way (one per MIRROR_VALUE_MS)
    this.mirrorPassAt = 0;
    this.layoutPending = true;
    this.plan = null;
    el.classList.add("grid");
    this.area = document.createElement("div");
    this.area.className = "blocks";
    // a list, not a table: a table lays out all its rows again for any cell's change,
    // while each item here is its own layout boundary (CSS contain), so a value's
    // change costs one item's layout
    this.mirror = document.createElement("ul");
    this.mirror.className = "visually-hidden mirror";
    this.mirror.setAttribute("aria-label", "devices: group, name, field, value, unit, state");
    this.body = this.mirror;
    el.append(this.area, this.mirror);
    new ResizeObserver(() => { this.layoutPending = true; this.onLayout(); }).observe(this.area);
  }

  _group(name) {
    let g = this.groups.get(name);
    if (!g) {
      const el = document.createElement("div");
      el.className = "block";
      el.innerHTML = "<h3><span></span><small></small></h3><canvas></canvas>";
      el.querySelector("span").textContent = name;
      this.area.append(el);
      g = { name, el, canvas: el.querySelector("canvas"), head: el.querySelector("h3"),
            count: el.querySelector("small"), list: [], cols: 1 };
      g.ctx = g.canvas.getContext("2d");
      this.groups.set(name, g);
    }
    return g;
  }

  has(topic) { return this.tiles.has(topic); }

  // A topic changed (or appeared, or is gone when `st` is undefined).
  touch(topic, st) {
    let t = this.tiles.get(topic);
    if (!st) {
      if (t) this._remove(t);
      return;
    }
    if (!t) {
      const g = this._group(this.meta.group(topic, this.level));
      // one element and one text node per tile (a readable sentence); the parts are in
      // data- attributes for tools and tests: few nodes for the browser to keep
      const row = document.createElement("li");
      row.append(document.createTextNode(""));
      row.dataset.topic = topic;
      row.dataset.group = g.name;
      this.body.append(row);
      t = { topic, g, index: g.list.length, row, key: "", mirrorAt: 0, mirrorState: "",
            state: "unknown", text: "", unit: "", name: "" };
      g.list.push(t);
      g.count.textContent = String(g.list.length);
      this.tiles.set(topic, t);
      this.layoutPending = true;
    }
    this.dirty.add(t);
  }

  _remove(t) {
    const g = t.g;
    g.list.splice(t.index, 1);
    g.list.forEach((x, i) => { x.index = i; });
    t.row.remove();
    this.tiles.delete(t.topic);
    this.dirty.delete(t);
    if (!g.list.length) { g.el.remove(); this.groups.delete(g.name); }
    else g.count.textContent = String(g.list.length);
    this.layoutPending = true;
  }

  all() { for (const t of this.tiles.values()) this.dirty.add(t); }

  layout() {
    this.layoutPending = false;
    const names = [...this.groups.keys()].sort();
    names.forEach((n, i) => { this.groups.get(n).el.style.order = String(i); });
    const W = this.area.clientWidth, H = this.area.clientHeight;
    const first = this.groups.get(names[0]);
    const rem = parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
    const head = first ? first.head.getBoundingClientRect().height : rem * 1.3;
    const pad = Math.round(rem * 0.25);
    this.plan = planLayout(names.map((n) => ({ name: n, count: this.groups.get(n).list.length })),
                           W, H, { gap: Math.round(rem * 0.35), head: head + 2, pad,
                                   minBlockW: rem * 6, textTileH: rem * 2.2, aspect: 2.4,
                                   maxTileH: Math.max(rem * 2.2, H / 4) });
    const dpr = window.devicePixelRatio || 1;
    const side = this.plan.side, aspect = this.plan.wide ? 2.4 : 1;
    const gap = tileGap(side);
    this.tileW = Math.round(side * aspect);
    this.tileH = side;
    this.gap = gap;
    for (const b of this.plan.blocks) {
      const g = this.groups.get(b.name);
      Object.assign(g.el.style, { left: `${b.x}px`, top: `${b.y}px`, width: `${b.w}px`,
                                  height: `${b.h}px`, padding: `${pad}px` });
      const w = b.w - 2 * pad, h = b.h - 2 * pad - head - 2;
      g.cols = Math.max(1, Math.floor((w + gap) / (this.tileW + gap)));
      const rows = Math.ceil(g.list.length / g.cols);
      const cw = Math.max(1, g.cols * (this.tileW + gap) - gap);
      const ch = Math.max(1, Math.min(h, rows * (side + gap) - gap));
      g.canvas.style.width = `${cw}px`;
      g.canvas.style.height = `${ch}px`;
      g.canvas.width = Math.round(cw * dpr);
      g.canvas.height = Math.round(ch * dpr);
      g.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    }
    for (const t of this.tiles.values()) { t.key = ""; this.dirty.add(t); }
  }

  // Paint dirty tiles until `deadline` (performance.now()); true when all are done.
  drawSome(deadline) {
    if (this.layoutPending) this.layout();
    let n = 0;
    for (const t of this.dirty) {
      if ((++n & 31) === 0 && performance.now() > deadline) return false;
      this.dirty.delete(t);
      this._draw(t);
    }
    n = 0;
    const now = Date.now();
    let nowRows = MIRROR_NOW_ROWS_PER_FRAME; // a fleet appearing: its rows over a second or two
    for (const t of this.mirrorNow) {
      if (nowRows-- <= 0 || ((++n & 31) === 0 && performance.now() > deadline)) return false;
      this.mirrorNow.delete(t);
      this.mirrorDirty.delete(t);
      this._mirror(t, now);
    }
    if (!this.mirrorPass && this.mirrorDirty.size && now - this.mirrorPassAt >=
        Math.max(MIRROR_VALUE_MS, this.tiles.size * MIRROR_MS_PER_TILE) - 100) {
      this.mirrorPassAt = now;
      this.mirrorPass = this.mirrorDirty; // new values arriving meanwhile: the next pass
      this.mirrorDirty = new Set();
    }
    if (this.mirrorPass) {
      const passMs = Math.max(MIRROR_VALUE_MS, this.tiles.size * MIRROR_MS_PER_TILE);
      let rows = Math.max(MIRROR_ROWS_PER_FRAME, Math.ceil((this.tiles.size * 2 * 16.7) / passMs));
      for (const t of this.mirrorPass) {
        if (rows-- <= 0) return false; // the rest in the next frames
        this.mirrorPass.delete(t);
        if (this.tiles.get(t.topic) === t) this._mirror(t, now);
      }
      this.mirrorPass = null;
    }
    return true; // values waiting for the next pass: the wall's 1 s tick schedules it
  }

  _draw(t) {
    const state = this.stateOf(t.topic);
    const v = this.valueOf(t.topic, t); // {value, text, unit, name}
    const frac = state === "unknown" || state === "offline" ? null : this.tOf(v.value);
    // colouring by a field this device does not report: its state's colour as a frame
    // around a dark tile (never the value scale, never the unknown grey)
    const novalue = frac === null && v.field !== "" && state !== "unknown" && state !== "offline";
    const fill = frac === null ? STATE_COLOURS[state === "stale" ? "normal" : state] || STATE_COLOURS.normal
      : sequential(frac);
    const wide = this.plan?.wide;
    const key = `${state}|${fill}|${novalue}|${wide ? v.text : ""}`;
    if (state !== t.state) this.mirrorNow.add(t); else this.mirrorDirty.add(t);
    t.state = state;
    t.name = v.name;
    t.unit = v.unit;
    t.field = v.field;
    t.text = state === "unknown" ? "" : v.text;
    t.fill = state === "unknown" ? STATE_COLOURS.unknown : fill;
    if (key === t.key || !this.plan?.side) return;
    t.key = key;
    const g = t.g;
    const tw = this.tileW, th = this.tileH, gap = this.gap;
    const x = (t.index % g.cols) * (tw + gap);
    const y = Math.floor(t.index / g.cols) * (th + gap);
    const ctx = g.ctx;
    ctx.clearRect(x, y, tw, th);
    paintShape(ctx, x, y, tw, th, state, fill, novalue);
    if (wide) this._label(ctx, t, x, y, tw, th, state, novalue ? 0 : frac, frameWidth(state, tw, th, novalue));
  }

  _label(ctx, t, x, y, w, h, state, frac, inset) {
    const ink = state === "offline" || state === "unknown" ? "#e5ecf4" : inkOn(frac ?? 0.3);
    const { pad, small, big } = labelLayout(w, h, inset);
    ctx.save();
    ctx.beginPath();
    ctx.rect(x + pad, y, w - 2 * pad, h);
    ctx.clip();
    ctx.fillStyle = ink;
    ctx.textBaseline = "top";
    ctx.font = `600 ${small}px system-ui, sans-serif`;
    ctx.fillText(t.name, x + pad, y + pad);
    ctx.font = `700 ${big}px system-ui, sans-serif`;
    const text = state === "unknown" ? "?" : state === "offline" ? "offline" :
      `${t.text || "–"}${t.unit && t.text ? ` ${t.unit}` : ""}`;
    ctx.fillText(text, x + pad, y + h - pad - big);
    ctx.restore();
  }

  _mirror(t, now) {
    t.mirrorAt = now;
    t.mirrorState = t.state;
    const row = t.row, d = row.dataset;
    const value = t.text ? `${t.field} ${t.text}${t.unit ? ` ${t.unit}` : ""}` : t.field ? `no ${t.field}` : "";
    const sentence = `${t.name}: ${value ? `${value}, ` : ""}${t.state}`;
    if (row.firstChild.nodeValue !== sentence) row.firstChild.nodeValue = sentence;
    for (const [k, v] of [["name", t.name], ["field", t.field || ""], ["value", t.text],
                          ["unit", t.unit], ["state", t.state], ["fill", t.fill]]) {
      if (d[k] !== v) d[k] = v;
    }
  }

  // What a tile shows, for debugging and tests.
  tile(topic) {
    const t = this.tiles.get(topic);
    return t ? { state: t.state, value: t.text, unit: t.unit, name: t.name, fill: t.fill,
                 group: t.g.name } : null;
  }

  // Bounding boxes of the blocks and the tiles' area inside them (for the layout tests).
  boxes() {
    return [...this.groups.values()].map((g) => {
      const b = g.el.getBoundingClientRect(), c = g.canvas.getBoundingClientRect();
      const rows = Math.ceil(g.list.length / g.cols);
      return { name: g.name, count: g.list.length,
               block: [b.left, b.top, b.width, b.height],
               tiles: [c.left, c.top, Math.min(g.list.length, g.cols) * (this.tileW + this.gap) - this.gap,
                       rows * (this.tileH + this.gap) - this.gap] };
    });
  }
}
