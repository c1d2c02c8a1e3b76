// Colours that mean something.
//
// States (Okabe-Ito palette, distinguishable with the common colour-vision
// deficiencies) are also told by shape, so colour is never the only cue:
//   normal  - a full tile;
//   warning - a full tile with a notch (triangle) in its top-right corner;
//   alarm   - a thick inset frame (inside the tile: it never covers a neighbour);
//   stale   - the lower-left half filled, the upper-right half dark;
//   offline - hollow: dark inside a thin frame, crossed;
//   unknown - dark with a dot in the middle (no data, or the wall lost its source).
// Values are coloured on a sequential scale (viridis: perceptually uniform, readable in
// greyscale and with colour-vision deficiencies), low = dark blue, high = yellow.

export const STATE_COLOURS = {
  normal: "#009e73",  // bluish green
  warning: "#e69f00", // orange
  alarm: "#d55e00",   // vermillion
  stale: "#8f8f8f",
  offline: "#6c7a89",
  unknown: "#3a4350",
};

export const STATES = ["normal", "warning", "alarm", "stale", "offline", "unknown"];

// viridis at 9 stops; interpolated linearly in between
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

const CACHE = new Array(101);
// colour of t in [0, 1], quantised to 101 steps (cheap, and few distinct fill styles)
export function sequential(t) {
  const k = Math.max(0, Math.min(100, Math.round((Number.isFinite(t) ? t : 0) * 100)));
  if (!CACHE[k]) {
    const x = (k / 100) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const c = VIRIDIS[i].map((a, j) => Math.round(a + (VIRIDIS[i + 1][j] - a) * f));
    CACHE[k] = `rgb(${c[0]},${c[1]},${c[2]})`;
  }
  return CACHE[k];
}

// Text on a fill: dark on the light end of the scale, light on the dark end.
export function inkOn(t) {
  return t > 0.6 ? "#0b0f14" : "#ffffff";
}

// A value range that follows the data but does not flicker: it widens at once and
// narrows slowly; served ranges (metadata) win.
export class Range {
  constructor() { this.lo = Infinity; this.hi = -Infinity; this.fixed = null; }
  reset() { this.lo = Infinity; this.hi = -Infinity; }
  see(v) {
    if (v < this.lo) this.lo = v;
    if (v > this.hi) this.hi = v;
  }
  t(v) {
    const [lo, hi] = this.fixed || [this.lo, this.hi];
    return hi > lo ? (v - lo) / (hi - lo) : 0.5;
  }
  bounds() { return this.fixed || [this.lo, this.hi]; }
}

// How far a state's frame reaches into a (w, h) tile: a label starts inside it (an
// alarm's frame of d/5 crossed the text, drawn 0.12 h in).
export function frameWidth(state, w, h, novalue = false) {
  const d = Math.min(w, h);
  if (novalue) return Math.max(1, d / 8);
  if (state === "offline") return Math.max(1, d / 10);
  if (state === "alarm") return Math.max(2, d / 10);
  return 0;
}

// Draw one tile's state shape in (x, y, w, h) on a 2D context. `fill` is the
// value's colour (or the state colour when colouring by state).
export function paintShape(ctx, x, y, w, h, state, fill, novalue = false) {
  const d = Math.min(w, h);
  if (novalue) { // the device reports no value of the field shown: a frame, not a fill
    ctx.fillStyle = "#151b22";
    ctx.fillRect(x, y, w, h);
    const lw = frameWidth(state, w, h, true);
    ctx.strokeStyle = fill;
    ctx.lineWidth = lw;
    if (state === "stale") ctx.setLineDash([lw * 2, lw * 2]); // stale: a dashed frame
    ctx.strokeRect(x + lw / 2, y + lw / 2, w - lw, h - lw);
    ctx.setLineDash([]);
    return;
  }
  if (state === "offline") {
    ctx.fillStyle = "#151b22";
    ctx.fillRect(x, y, w, h);
    ctx.strokeStyle = STATE_COLOURS.offline;
    ctx.lineWidth = frameWidth(state, w, h);
    const m = ctx.lineWidth / 2;
    ctx.strokeRect(x + m, y + m, w - 2 * m, h - 2 * m);
    ctx.beginPath();
    ctx.moveTo(x + m, y + m); ctx.lineTo(x + w - m, y + h - m);
    ctx.moveTo(x + w - m, y + m); ctx.lineTo(x + m, y + h - m);
    ctx.stroke();
    return;
  }
  if (state === "unknown") {
    ctx.fillStyle = STATE_COLOURS.unknown;
    ctx.fillRect(x, y, w, h);
    ctx.fillStyle = "#9aa6b4";
    ctx.beginPath();
    const cx = w > 1.5 * h ? x + w - h / 2 : x + w / 2; // wide tiles: right of the text
    ctx.arc(cx, y + h / 2, Math.max(1, d / 7), 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  if (state === "stale") {
    ctx.fillStyle = "#151b22";
    ctx.fillRect(x, y, w, h);
    ctx.fillStyle = fill;
    ctx.beginPath();
    ctx.moveTo(x, y); ctx.lineTo(x, y + h); ctx.lineTo(x + w, y + h);
    ctx.closePath();
    ctx.fill();
    return;
  }
  ctx.fillStyle = fill;
  ctx.fillRect(x, y, w, h);
  if (state === "warning") {
    const n = Math.max(3, d * 0.45);
    ctx.fillStyle = STATE_COLOURS.warning;
    ctx.beginPath();
    ctx.moveTo(x + w - n, y); ctx.lineTo(x + w, y); ctx.lineTo(x + w, y + n);
    ctx.closePath();
    ctx.fill();
  } else if (state === "alarm") {
    const lw = frameWidth(state, w, h);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = lw;
    ctx.strokeRect(x + lw / 2, y + lw / 2, w - lw, h - lw);
    ctx.strokeStyle = STATE_COLOURS.alarm;
    ctx.lineWidth = lw * 0.6;
    ctx.strokeRect(x + lw / 2, y + lw / 2, w - lw, h - lw);
  }
}

// The key under the wall: the state shapes and, when colouring by a field, the scale
// with its bounds and unit. Small canvases, so the key looks exactly like the tiles.
export function renderLegend(el, { field, unit, bounds, byState, format }) {
  el.replaceChildren();
  // one key entry: a tile-like canvas painted as a tile in `state` would be, and a label
  const swatch = (state, fill, label, missing = false) => {
    const item = document.createElement("span");
    item.className = "key";
    const c = document.createElement("canvas");
    const s = Math.round(parseFloat(getComputedStyle(el).fontSize) * 1.1) || 20;
    const dpr = window.devicePixelRatio || 1;
    c.width = c.height = s * dpr;
    c.style.width = c.style.height = `${s}px`;
    const ctx = c.getContext("2d");
    ctx.scale(dpr, dpr);
    paintShape(ctx, 0, 0, s, s, state, fill, missing);
    item.append(c, document.createTextNode(label));
    el.append(item);
  };
  for (const st of STATES) {
    const fill = byState || st === "stale" ? STATE_COLOURS[st === "stale" ? "normal" : st]
      : sequential(0.5);
    swatch(st, st === "normal" || st === "warning" || st === "alarm" || st === "stale" ? fill : null, st);
  }
  if (!byState) swatch("normal", STATE_COLOURS.normal, `no ${field}`, true);
  if (!byState && bounds && Number.isFinite(bounds[0])) {
    const scale = document.createElement("span");
    scale.className = "scale";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map(sequential).join(",")})`;
    const lo = document.createElement("b");
    lo.textContent = `${format(bounds[0])}${unit ? ` ${unit}` : ""}`;
    const hi = document.createElement("b");
    hi.textContent = `${format(bounds[1])}${unit ? ` ${unit}` : ""}`;
    scale.append(document.createTextNode(`${field}: `), lo, bar, hi);
    el.append(scale);
  }
}
