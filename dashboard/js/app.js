// The big screen. URL parameters (kiosk mode):
//   filter=berlin/#   which topics (default #)
//   field=temperature the field that colours the tiles (default: per kind, see PRIMARY)
//   device=<path>     the device shown in the lower chart
//   rate=10           updates per second per topic (default 10)
//   token=...         access token (else localStorage "gatewayToken")
//   title=...         the header
// Rules: socket updates only mark things dirty; one requestAnimationFrame draws them.
// Every history is a fixed-size ring buffer, so memory stays flat over hours.

import uPlot from "../node_modules/uplot/dist/uPlot.esm.js";
import { GatewayClient } from "./client.js";

const params = new URLSearchParams(location.search);
const FILTER = params.get("filter") || "#";
const FIELD = params.get("field") || "auto";
const RATE = Number(params.get("rate") || 10);
const TOKEN = params.get("token") || localStorage.getItem("gatewayToken");
const PRIMARY = { env: "temperature", machine: "power", server: "cpu" };
const ALARMS = { temperature: [null, 28], vibration: [null, 5], cpu: [null, 95],
                 humidity: [10, 85] };
const HISTORY = 300; // chart points (1 per second: 5 minutes)
const MAX_EVENTS = 40;

const $ = (id) => document.getElementById(id);
if (params.get("title")) $("title").textContent = params.get("title");
$("field-name").textContent = FIELD === "auto" ? "temperature" : FIELD;

const wsUrl = new URL("ws", location.href);
wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const client = new GatewayClient({ url: wsUrl.toString(), filters: [FILTER], rateHz: RATE,
                                   token: TOKEN, transport: params.get("transport") || "auto" });
window.gatewayClient = client; // for people debugging a wall, and for the tests
window.wall = {
  // what a tile shows: {state: live|stale|offline, value, alarm}, or null
  tile: (topic) => {
    const t = tiles.get(topic);
    return t ? { state: t.state, value: t.value, alarm: t.alarm } : null;
  },
  tilesWithValues: () => [...tiles.values()].filter((t) => t.value !== "").length,
  drawMs: () => drawMs.slice(),
};

const tiles = new Map(); // topic -> element
const sites = new Map(); // site -> {el, tiles, count}
const ranges = new Map(); // field -> [min, max] seen (for colours)
const alarms = new Set();
const dirty = new Set();
let selected = params.get("device");
let updates = 0;
let frameScheduled = false;

function fieldOf(topic) {
  if (FIELD !== "auto") return FIELD;
  const kind = topic.split("/").pop().split("-")[0];
  return PRIMARY[kind] || "value";
}

// Each site is one canvas: repainting thousands of tiles is thousands of fillRect
// calls, not thousands of DOM style changes (which the renderer must restyle and paint).
function siteBlock(site) {
  let s = sites.get(site);
  if (!s) {
    const el = document.createElement("div");
    el.className = "site";
    el.innerHTML = `<h2><span></span><small></small></h2><canvas></canvas>`;
    el.querySelector("span").textContent = site;
    const ordered = [...sites.keys(), site].sort();
    const next = sites.get(ordered[ordered.indexOf(site) + 1]);
    $("sites").insertBefore(el, next ? next.el : null);
    const canvas = el.querySelector("canvas");
    s = { el, canvas, ctx: canvas.getContext("2d"), count: el.querySelector("small"),
          list: [], cols: 1, side: 10 };
    canvas.onclick = (ev) => {
      const r = canvas.getBoundingClientRect();
      const col = Math.floor((ev.clientX - r.left) / (s.side + 2));
      const row = Math.floor((ev.clientY - r.top) / (s.side + 2));
      const tile = s.list[row * s.cols + col];
      if (tile) select(tile.topic);
    };
    sites.set(site, s);
  }
  return s;
}

function tileFor(topic) {
  let t = tiles.get(topic);
  if (!t) {
    const s = siteBlock(topic.split("/")[0]);
    t = { topic, site: s, index: s.list.length, bg: "#2a3340", state: "live", alarm: false,
          value: "" };
    s.list.push(t);
    s.count.textContent = `${s.list.length} devices`;
    tiles.set(topic, t);
    layoutPending = true;
    if (!selected) select(topic);
  }
  return t;
}

function colour(field, v) {
  if (typeof v !== "number") return v === "run" ? "#2f7d57" : v === "idle" ? "#6b5b2a" :
    v === "maintenance" ? "#7a3a3a" : "#2a3340";
  const r = ranges.get(field) || [v, v];
  const lo = Math.min(r[0], v), hi = Math.max(r[1], v);
  ranges.set(field, [lo, hi]);
  const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
  return `hsl(${Math.round(220 - 220 * t)}, 70%, ${Math.round(38 + 10 * t)}%)`;
}

function isAlarm(state) {
  for (const [f, [lo, hi]] of Object.entries(ALARMS)) {
    const v = state.fields[f];
    if (typeof v !== "number") continue;
    if ((lo !== null && v < lo) || (hi !== null && v > hi)) return `${f} ${v}`;
  }
  return null;
}

// Tiles as large as the wall allows: the sites area divided among all devices.
let layoutPending = false;
function layout() {
  const area = $("sites");
  const perSite = Math.max(1, ...[...sites.values()].map((x) => x.list.length));
  const columns = Math.min(sites.size || 1, 4);
  const rows = Math.ceil((sites.size || 1) / columns);
  area.style.gridTemplateColumns = `repeat(${columns}, 1fr)`;
  // measure a real block: its padding, gaps and heading scale with the viewport
  const first = sites.values().next().value;
  const style = first ? getComputedStyle(first.el) : null;
  const padX = style ? parseFloat(style.paddingLeft) + parseFloat(style.paddingRight) : 16;
  const head = first ? first.el.querySelector("h2").getBoundingClientRect().height : 24;
  const gap = parseFloat(getComputedStyle(area).rowGap) || 0;
  const w = (first ? first.el.clientWidth : area.clientWidth / columns) - padX;
  const h = (area.clientHeight - gap * (rows - 1)) / rows - head - padX - 8;
  let side = Math.floor(Math.sqrt((w * h) / perSite));
  while (side > 3 && Math.floor(w / (side + 2)) * Math.floor(h / (side + 2)) < perSite) side -= 1;
  const dpr = window.devicePixelRatio || 1;
  for (const s of sites.values()) {
    s.side = side;
    s.cols = Math.max(1, Math.floor(w / (side + 2)));
    const height = Math.ceil(s.list.length / s.cols) * (side + 2);
    s.canvas.style.width = `${s.cols * (side + 2)}px`;
    s.canvas.style.height = `${height}px`;
    s.canvas.width = s.cols * (side + 2) * dpr;
    s.canvas.height = height * dpr;
    s.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    for (const t of s.list) paint(t);
  }
  layoutPending = false;
}

function paint(t) {
  const s = t.site;
  const x = (t.index % s.cols) * (s.side + 2);
  const y = Math.floor(t.index / s.cols) * (s.side + 2);
  const ctx = s.ctx;
  const d = s.side;
  ctx.clearRect(x, y, d + 2, d + 2);
  ctx.globalAlpha = t.state === "stale" ? 0.45 : 1;
  ctx.fillStyle = t.state === "offline" ? "#1a1f26" : t.bg;
  ctx.fillRect(x, y, d, d);
  ctx.globalAlpha = 1;
  const ring = t.topic === selected ? "#5cc8ff" : t.state === "offline" || t.alarm ? "#ff5c5c" :
    t.state === "stale" ? "#ffc542" : null;
  if (ring) {
    ctx.lineWidth = Math.max(1.5, d / 8);
    ctx.setLineDash(t.state === "stale" && t.topic !== selected ? [d / 4, d / 6] : []);
    ctx.strokeStyle = ring;
    ctx.strokeRect(x + 1, y + 1, d - 2, d - 2);
    ctx.setLineDash([]);
  }
}

// Draw dirty tiles within a time budget per frame: a tick of thousands of changes
// is spread over a few frames instead of one long one. Writes that would not change
// anything (same colour, same classes) are skipped: the DOM work is the cost here.
const FRAME_BUDGET_MS = 8;
const drawMs = []; // the last 2,000 draw durations (window.wall.drawMs), for measurement
drawMs.push = function (v) { if (this.length >= 2000) this.shift(); return Array.prototype.push.call(this, v); };
const drawn = new Map(); // topic -> last written "colour|state|alarm|selected"

function draw() {
  frameScheduled = false;
  if (layoutPending) layout();
  const started = performance.now();
  let n = 0;
  for (const topic of dirty) {
    if ((++n & 63) === 0 && performance.now() - started > FRAME_BUDGET_MS) break;
    dirty.delete(topic);
    const st = client.topics.get(topic);
    const el = tileFor(topic);
    if (!st) { drawn.delete(topic); continue; } // dropped (new epoch): repainted on relayout
    const field = fieldOf(topic);
    const value = st.fields[field];
    const bg = colour(field, value);
    const state = st.online === false ? "offline" : st.stale ? "stale" : "live";
    const alarm = isAlarm(st);
    const key = `${bg}|${state}|${alarm ? 1 : 0}|${topic === selected ? 1 : 0}`;
    el.value = String(value ?? "");
    if (drawn.get(topic) !== key && !layoutPending) {
      drawn.set(topic, key);
      Object.assign(el, { bg, state, alarm: !!alarm });
      paint(el);
    } else {
      Object.assign(el, { bg, state, alarm: !!alarm });
    }
    if (alarm && !alarms.has(topic)) event(`${topic}: ${alarm}`, "bad");
    if (alarm) alarms.add(topic); else alarms.delete(topic);
  }
  if (layoutPending) layout();
  kpis();
  drawMs.push(performance.now() - started);
  if (dirty.size) schedule(); // the rest next frame
}

function schedule() {
  if (!frameScheduled) {
    frameScheduled = true;
    requestAnimationFrame(draw);
  }
}

const previous = new Map(); // topic -> "online|offline|stale" for the event list
client.addEventListener("change", (e) => {
  for (const topic of e.detail.topics) {
    dirty.add(topic);
    updates += 1;
    const st = client.topics.get(topic);
    const now = st ? (st.online === false ? "offline" : st.stale ? "stale" : "online") : "gone";
    const before = previous.get(topic);
    if (before && before !== now) {
      event(`${topic} is ${now}`, now === "online" ? "ok" : now === "stale" ? "warn" : "bad");
    }
    previous.set(topic, now);
  }
  schedule();
});

function event(text, cls) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const list = $("events");
  list.insertBefore(li, list.firstChild);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function kpis() {
  let online = 0, offline = 0, stale = 0;
  for (const st of client.topics.values()) {
    if (st.online === false) offline += 1; else online += 1;
    if (st.stale) stale += 1;
  }
  $("kpi-total").textContent = client.topics.size;
  $("kpi-online").textContent = online;
  $("kpi-offline").textContent = offline;
  $("kpi-stale").textContent = stale;
  $("kpi-alarms").textContent = alarms.size;
}

// -- connection indicator with data age -------------------------------------------------
const conn = $("conn");
client.addEventListener("status", (e) => {
  const { status, code } = e.detail;
  conn.className = `conn ${status}`;
  conn.dataset.status = status === "closed" ? "disconnected" : status;
  const via = client.transport === "sse" ? " (events)" : "";
  $("conn-text").textContent = status === "closed" ? `disconnected (${code})` : status + via;
});
setInterval(() => {
  let newest = 0;
  for (const st of client.topics.values()) newest = Math.max(newest, st.rx || 0);
  const age = newest ? Math.max(0, Date.now() / 1000 - newest) : null;
  if (client.status === "open") {
    $("conn-text").textContent = age === null ? "live" : `live, data age ${age.toFixed(1)} s`;
  }
  $("kpi-rate").textContent = updates;
  updates = 0;
}, 1000);

// -- charts: ring buffers sampled once a second -----------------------------------------
class Ring {
  constructor(n) { this.a = new Float64Array(n); this.n = n; this.len = 0; this.i = 0; }
  push(v) { this.a[this.i] = v; this.i = (this.i + 1) % this.n; this.len = Math.min(this.len + 1, this.n); }
  values() {
    const out = new Array(this.len);
    for (let k = 0; k < this.len; k++) out[k] = this.a[(this.i - this.len + k + this.n) % this.n];
    return out;
  }
}

const times = new Ring(HISTORY);
const siteSeries = new Map(); // site -> Ring
const deviceRing = new Ring(HISTORY);
let siteChart = null, deviceChart = null, chartSites = [];

function chartOpts(el, series) {
  // uPlot draws axis text on its canvas in pixels: scale it with the page's root font
  // size (which follows the viewport), or it is unreadable on a 4K wall
  const px = parseFloat(getComputedStyle(document.documentElement).fontSize) || 12;
  const font = `${Math.round(px * 0.95)}px system-ui, sans-serif`;
  const axis = { stroke: "#8b98a8", grid: { stroke: "#1c2530" }, ticks: { stroke: "#1c2530" },
                 font };
  const x = { ...axis, space: Math.round(px * 7), size: Math.round(px * 3.4) };
  const y = { ...axis, space: Math.round(px * 2.5), size: Math.round(px * 4.2) };
  // leave room for the legend under the plot
  return { width: el.clientWidth, height: Math.max(80, el.clientHeight - 34), series: [{}, ...series],
           axes: [x, y], legend: { show: true }, cursor: { show: false } };
}

const PALETTE = ["#5cc8ff", "#ffc542", "#3ecf8e", "#ff5c5c", "#c38bff", "#ff9f5c", "#7ee0d0",
                 "#f28fb1"];

function sample() {
  times.push(Date.now() / 1000);
  const sums = new Map();
  for (const [topic, st] of client.topics) {
    const v = st.fields[FIELD === "auto" ? "temperature" : FIELD];
    if (typeof v !== "number") continue;
    const site = topic.split("/")[0];
    const s = sums.get(site) || [0, 0];
    s[0] += v; s[1] += 1;
    sums.set(site, s);
  }
  for (const site of sums.keys()) {
    if (!siteSeries.has(site)) {
      const ring = new Ring(HISTORY);
      for (let k = 1; k < times.len; k++) ring.push(NaN);
      siteSeries.set(site, ring);
    }
  }
  for (const [site, ring] of siteSeries) {
    const s = sums.get(site);
    ring.push(s ? s[0] / s[1] : NaN);
  }
  const sel = selected && client.topics.get(selected);
  const v = sel ? sel.fields[fieldOf(selected)] : NaN;
  deviceRing.push(typeof v === "number" ? v : NaN);
  render();
}

function render() {
  const t = times.values();
  const names = [...siteSeries.keys()].sort();
  const elS = $("chart-sites");
  if (!siteChart || names.join() !== chartSites.join()) {
    siteChart?.destroy();
    chartSites = names;
    siteChart = new uPlot(chartOpts(elS, names.map((n, i) => ({
      label: n, stroke: PALETTE[i % PALETTE.length], width: 2 }))), [t, ...names.map(() => [])], elS);
  }
  siteChart.setData([t, ...names.map((n) => siteSeries.get(n).values())]);
  const elD = $("chart-device");
  if (!deviceChart) {
    deviceChart = new uPlot(chartOpts(elD, [{ label: "value", stroke: "#5cc8ff", width: 2 }]),
                            [t, []], elD);
  }
  deviceChart.setData([t, deviceRing.values()]);
}

function select(topic) {
  const before = selected && tiles.get(selected);
  selected = topic;
  if (before) { drawn.delete(before.topic); paint(before); }
  const now = tiles.get(topic);
  if (now && !layoutPending) paint(now);
  $("device-title").textContent = `${topic} (${fieldOf(topic)})`;
  deviceRing.len = 0;
}

if (selected) $("device-title").textContent = selected;
setInterval(sample, 1000);
window.addEventListener("resize", () => {
  layout();
  for (const [chart, el] of [[siteChart, $("chart-sites")], [deviceChart, $("chart-device")]]) {
    chart?.setSize({ width: el.clientWidth, height: Math.max(80, el.clientHeight - 34) });
  }
});
$("legend").textContent = `filter ${FILTER} · colour: ${FIELD === "auto" ? "temperature / power / cpu" : FIELD} · offline: red outline · stale: dashed, dimmed · click a tile to chart it`;
client.start();
