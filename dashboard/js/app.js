// The wall. It is described by the gateway's /api/wall when configured, else it is the
// automatic wall (wallconfig.js); what values mean comes from meta.js only.
// URL parameters (kiosk): filter, title, rate, token, transport (auto|ws|sse), grace,
// warn, bad (seconds), rotate (seconds), wall=auto, worker=0 (the connection in the page). The URL fragment remembers the
// viewer's choices: #field=<name>|state&page=<n>.
// Rules: socket updates only mark tiles dirty; one requestAnimationFrame paints them
// within a budget; everything else (KPIs, charts, tables, banner) renders once a second;
// every history is a fixed-size ring buffer, so memory stays flat over hours.

import { shouldReconnect } from "./client.js";
import { FeedClient } from "./feed.js";
import { refusalText, diagnose } from "./refusal.js";
import { Meta } from "./meta.js";
import { Health, fmtAge } from "./health.js";
import { loadWall, matches } from "./wallconfig.js";
import { DeviceGrid } from "./grid.js";
import { TrendPanel, HISTORY } from "./charts.js";
import { HistoryLoader } from "./history.js";
import { EventLog } from "./events.js";
import { KpiRow, WorstTable, AlarmList } from "./panels.js";
import { Range, renderLegend } from "./colour.js";
import { WallReporter, wallName } from "./wallreport.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const FRAME_BUDGET_MS = 8;
let frameScheduled = false;
const drawMs = []; // the last 2,000 draw durations (window.wall.drawMs), for measurement
function schedule() {
  if (!frameScheduled) { frameScheduled = true; requestAnimationFrame(draw); }
}
const wall = await loadWall(params);
const meta = new Meta();

document.title = wall.title;
$("title").textContent = wall.title;
const TOKEN = params.get("token") || localStorage.getItem("gatewayToken");
const wsUrl = new URL("ws", location.href);
wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
// alarm states are topics under "$alarms/", which "#" does not match: asked for explicitly;
// the charts' history is fetched after the first paint (history.js), on either transport
// the connection runs in a worker (feed.js, feedworker.js): receiving, parsing and
// applying 20,000 updates a second stays off this thread; ?worker=0 runs it here
const client = new FeedClient({ url: wsUrl.toString(), filters: [wall.filter, "$alarms/#"],
                                rateHz: Number(params.get("rate") || 10), token: TOKEN,
                                transport: params.get("transport") || "auto" },
                              { worker: params.get("worker") !== "0" });
// the client's token: ?token=, the stored one, or #token= (which only the client reads)
meta.load(location.href, { token: client.token }).then(() => metaChanged());
const historyLoader = new HistoryLoader({
  token: client.token, seconds: HISTORY,
  topics: function* () { for (const t of client.topics.keys()) if (!meta.isAlarmTopic(t)) yield t; },
  groupOf: (t, level) => meta.group(t, level),
});
meta.historySource = (field, level) => historyLoader.load(field, level);
let firstPaint = null; // performance.now() when the first snapshot's tiles were all painted
let firstDeviceAt = null; // performance.now() of the first device's state
const health = new Health(client, { grace_s: wall.grace_s ?? 10, warn_s: wall.warn_s ?? 5,
                                    bad_s: wall.bad_s ?? 30 });

// -- the viewer's choices, in the URL fragment -------------------------------------------
let choices = new URLSearchParams(location.hash.slice(1)); // parsed once per change
let picked = choices.get("field"); // asked for every tile drawn: kept at hand
function choice(key) { return key === "field" ? picked : choices.get(key); }
function choose(key, value) {
  choices.set(key, value);
  picked = choices.get("field");
  history.replaceState(null, "", `#${choices}`);
}
// The colouring field of panels whose field is "auto": the viewer's choice, else the most
// widely reported numeric field. "state" colours by state alone.
function autoField() {
  const c = choice("field");
  if (c) return c;
  return meta.fields()[0] || null;
}

// -- pages and panels ---------------------------------------------------------------------
const grids = []; // {grid, filter, field, page}
const trends = [];
const worst = [];
const alarmLists = [];
const kpiRows = [];
let events = null;
const pages = wall.pages.map((page, index) => {
  const el = document.createElement("section");
  el.className = "page";
  el.setAttribute("aria-label", page.name);
  const top = document.createElement("div");
  top.className = "top";
  const body = document.createElement("div");
  body.className = "body";
  const left = document.createElement("div");
  left.className = "left";
  const side = document.createElement("div");
  side.className = "side";
  body.append(left, side);
  el.append(top, body);
  for (const p of page.panels) {
    const panel = document.createElement("div");
    panel.className = `panel ${p.type}`;
    const filter = p.filter || page.filter || "#";
    if (p.type === "kpis") {
      top.append(panel);
      kpiRows.push({ row: new KpiRow(panel, { alarms: true }), filter, page: index });
      continue;
    }
    if (p.type === "grid") {
      left.append(panel);
      if (p.title) {
        const h = document.createElement("h2");
        h.textContent = p.title;
        panel.append(h);
      }
      const holder = document.createElement("div");
      holder.className = "grid-holder";
      panel.append(holder);
      const entry = { filter, field: p.field || "auto", page: index };
      entry.grid = new DeviceGrid(holder, {
        meta, level: p.level || 1, onLayout: schedule,
        stateOf: (t) => stateOf(t),
        valueOf: (t, tile) => valueOf(t, fieldOf(entry), tile),
        tOf: (v) => tOf(fieldOf(entry), v),
      });
      grids.push(entry);
      continue;
    }
    side.append(panel);
    if (p.type === "trend") {
      trends.push({ panel: new TrendPanel(panel, { meta, field: p.field, level: p.level || 1,
                                                   groups: p.groups || null, max: p.max || 6,
                                                   title: p.title || "" }), filter, page: index });
    } else if (p.type === "worst") {
      worst.push({ table: new WorstTable(panel, { rows: p.rows || 8 }), field: p.field || "auto", filter, page: index });
    } else if (p.type === "alarms") {
      alarmLists.push({ list: new AlarmList(panel, { meta, ack: (alarms) => client.ackAlarm(alarms) }), page: index });
    } else if (p.type === "events") {
      const h = document.createElement("h2");
      h.textContent = p.title || "Events";
      const ol = document.createElement("ol");
      panel.append(h, ol);
      events ??= new EventLog(ol, { groupOf: (t) => meta.group(t, 1) });
    }
  }
  if (!side.children.length) body.classList.add("full");
  $("main").append(el);
  return { ...page, el };
});
events ??= new EventLog(document.createElement("ol"), { groupOf: (t) => meta.group(t, 1) });

let current = -1;
function showPage(i) {
  i = ((i % pages.length) + pages.length) % pages.length;
  if (i === current) return;
  current = i;
  pages.forEach((p, k) => { p.el.hidden = k !== i; });
  for (const g of grids) if (g.page === i) { g.grid.layoutPending = true; g.grid.all(); }
  choose("page", String(i));
  const nav = $("pages");
  nav.replaceChildren(...pages.map((p, k) => {
    const b = document.createElement("button");
    b.textContent = p.name;
    b.className = k === i ? "current" : "";
    b.onclick = () => showPage(k);
    return b;
  }));
  nav.hidden = pages.length < 2;
  schedule();
}
showPage(Number(choice("page") || 0));
if (wall.rotate_s > 0 && pages.length > 1) setInterval(() => showPage(current + 1), wall.rotate_s * 1000);

// -- what a tile shows ----------------------------------------------------------------------
// the viewer's pick wins over a panel's configured field; "auto" follows the data
function fieldOf(entry) { return choice("field") || (entry.field === "auto" ? autoField() : entry.field); }
function stateOf(topic) {
  return health.unknown() ? "unknown" : meta.state(topic, client.topics.get(topic));
}
function valueOf(topic, field, tile = null) {
  const st = client.topics.get(topic);
  const value = st && field && field !== "state" ? st.fields[field] : undefined;
  const name = tile?.name || meta.displayName(topic, st); // names change with metadata only
  return { value, field: field === "state" ? "" : field || "", name,
           text: meta.format(field, value), unit: typeof value === "number" ? meta.unit(field) : "" };
}
const ranges = new Map(); // field -> Range
function tOf(field, v) {
  if (typeof v !== "number" || !field || field === "state") return null;
  const r = ranges.get(field);
  return r && Number.isFinite(r.lo) ? Math.max(0, Math.min(1, r.t(v))) : 0.5;
}

// -- updates ---------------------------------------------------------------------------------
let updates = 0;
let alarmsDirty = false; // the alarm list renders on the next tick, not per message
function renderAlarms() {
  alarmsDirty = false;
  for (const a of alarmLists) a.list.render();
}
// Metadata changed (loaded, or a new version): names, units and scales everywhere.
function metaChanged() {
  for (const g of grids) { for (const t of g.grid.tiles.values()) t.name = ""; g.grid.all(); }
  fieldsKey = "";
  legendKey = "";
  for (const r of ranges.values()) r.lo = Infinity; // rebuilt with the configured range
  schedule();
}
const previous = new Map(); // topic -> online|offline|stale (for the event list)
let epochDropped = false;
client.addEventListener("change", (e) => {
  for (const topic of e.detail.topics) {
    if (meta.isAlarmTopic(topic)) { // alarm topics feed meta (and the event list), not tiles
      const change = meta.alarmTopic(topic, client.topics.get(topic));
      if (change) events.alarm(change);
      const device = meta.alarms.get(topic)?.topic; // its tile's colour follows its alarms
      const dst = device && client.topics.get(device);
      if (dst) for (const g of grids) if (matches(g.filter, device)) g.grid.touch(device, dst);
      if (!alarmsDirty) { alarmsDirty = true; setTimeout(renderAlarms, 100); } // seen within 0.1 s
      continue;
    }
    const st = client.topics.get(topic);
    firstDeviceAt ??= performance.now();
    meta.observe(topic, st);
    updates += 1;
    for (const g of grids) if (matches(g.filter, topic)) g.grid.touch(topic, st);
    const now = st ? (st.online === false ? "offline" : st.stale ? "stale" : "online") : "gone";
    const before = previous.get(topic);
    if (now === "gone") {
      previous.delete(topic);
      if (!epochDropped) events.transition(topic, before, now);
    } else if (before !== now) {
      if (before !== undefined || !seenEver.has(topic)) events.transition(topic, before, now);
      previous.set(topic, now);
      seenEver.add(topic);
    }
  }
  schedule();
});
const seenEver = new Set();

function draw() {
  frameScheduled = false;
  const started = performance.now();
  let done = true;
  for (const g of grids) {
    if (g.page === current && !g.grid.drawSome(started + FRAME_BUDGET_MS)) done = false;
  }
  if (drawMs.length >= 2000) drawMs.shift();
  drawMs.push(performance.now() - started);
  if (!done) schedule();
  // tiles first, then the charts' history: once every tile on the page was painted (not
  // "nothing left to draw": with devices at 10 Hz there always is), or 5 s after the
  // first device at the latest
  if (firstPaint === null && firstDeviceAt !== null) {
    const painted = grids.every((g) => {
      if (g.page !== current) return true;
      for (const t of g.grid.tiles.values()) if (!t.key) return false;
      return true;
    });
    if (painted || started - firstDeviceAt > 5000) {
      firstPaint = performance.now();
      historyLoader.open();
    }
  }
}

// -- the connection, honestly --------------------------------------------------------------
const TRANSPORT = { ws: "WebSocket", sse: "Server-Sent Events" };
let lastStatus = null;
function header() {
  const conn = $("conn");
  const status = client.status === "closed" ? "disconnected" : client.status;
  conn.dataset.status = status;
  conn.dataset.transport = client.transport;
  conn.dataset.level = health.level();
  const age = health.age();
  const word = status === "open" ? (health.reason ? health.reason : "live") : status;
  $("conn-text").textContent = `${word} · ${TRANSPORT[client.transport]}` +
    (age === null ? "" : ` · data age ${fmtAge(age)}`);
  const banner = $("banner");
  const notice = health.notice(wall.filter);
  const refused = refusal ? refusalText(refusal) : "";
  const text = refused || health.bannerText() || notice;
  banner.classList.toggle("notice", !refused && !!notice);
  banner.dataset.refusal = refused ? String(refusal.code) : "";
  banner.hidden = !text;
  if (banner.textContent !== text) banner.textContent = text;
  document.body.classList.toggle("unknown", health.unknown());
}
// Why the gateway refuses the wall, when it does (refusal.js): a close code after which
// the client stays closed, or a handshake refused with 401/403 (asked at most every 5 s)
let refusal = null;
let diagnosedAt = -Infinity;
async function whyRefused() {
  if (performance.now() - diagnosedAt < 5000) return;
  diagnosedAt = performance.now();
  const found = await diagnose(location.href, client.token);
  if (client.status !== "open") { refusal = found; header(); }
}
client.addEventListener("status", (e) => {
  const { status, code } = e.detail;
  if (status === "open") refusal = null;
  else if (status === "closed" && code !== undefined && !shouldReconnect(code)) {
    refusal = { code, reason: e.detail.reason || "" };
  } else if (status === "closed" && (code === undefined || code === 1006)) whyRefused();
  if (status === "open" && lastStatus !== "open") {
    epochDropped = false;
    if (client.meta?.version && client.meta.version !== meta.version) {
      meta.load(location.href, { token: client.token, url: client.meta.url || "api/meta" }).then(() => metaChanged());
    }
    if (lastStatus) events.add(`connected via ${TRANSPORT[client.transport]}${e.detail.resumed ? " (resumed)" : ""}`, "ok");
  } else if (status === "closed" && lastStatus === "open") {
    events.add(`connection lost (${e.detail.code ?? "?"}${e.detail.reason ? `: ${e.detail.reason}` : ""})`, "bad");
    epochDropped = true; // a new epoch may drop every topic: not "removed" devices
  }
  lastStatus = status;
  health.update();
  header();
});
let wasUnknown = health.unknown();
health.addEventListener("change", () => tick());

// -- once a second -----------------------------------------------------------------------------
let legendKey = "";
let fieldsKey = "";
const tickMs = []; // the last 60 ticks' longest task (window.wall.tickMs)
// The tick is three tasks (state and KPIs; chart samples; tables, key and header), so
// that a frame can be drawn between them: one 15 ms task a second was a long frame a
// second with 5,000 devices, 1.7 % of the frames, enough to set the p99 (measured: the
// frames did not change beyond the machine's noise; the longest task is 2-3x shorter).
let tickLongest = 0;
function timed(fn) {
  return () => {
    const t0 = performance.now();
    fn();
    tickLongest = Math.max(tickLongest, performance.now() - t0);
  };
}
const tick = timed(() => {
  tickLongest = 0;
  const stats = { total: 0, online: 0, offline: 0, nopresence: 0, stale: 0, alarms: 0, newestRx: 0, rate: updates,
                  critical: 0, major: 0, minor: 0, warning: 0 };
  for (const a of meta.alarms.values()) if (a.active && a.severity in stats) stats[a.severity] += 1;
  updates = 0;
  const values = new Map(); // field -> [lo, hi] of fields in use
  const used = new Set(grids.map(fieldOf).concat(worst.map(fieldOf)));
  for (const f of used) if (f && f !== "state") values.set(f, [Infinity, -Infinity]);
  for (const [topic, st] of client.topics) {
    if (meta.isAlarmTopic(topic)) continue;
    stats.total += 1;
    // as the gateway's gateway_devices: a device that reports no presence is neither
    if (st.online === true) stats.online += 1;
    else if (st.online === false) stats.offline += 1;
    else stats.nopresence += 1;
    if (st.stale) stats.stale += 1;
    if (meta.alarmOf(topic)) stats.alarms += 1;
    if (st.rx > stats.newestRx) stats.newestRx = st.rx;
    for (const [f, r] of values) {
      const v = st.fields[f];
      if (typeof v === "number") { if (v < r[0]) r[0] = v; if (v > r[1]) r[1] = v; }
    }
  }
  health.update(stats);
  header(); // the header's colour follows the data age from the same task on (not a task later)
  const unknown = health.unknown();
  for (const [f, [lo, hi]] of values) {
    let r = ranges.get(f);
    if (!r) ranges.set(f, (r = new Range()));
    r.fixed = meta.range(f);
    if (!Number.isFinite(lo)) continue;
    // the scale moves only when the data leaves it or fills less than 60% of it, then
    // with 10% headroom: repainting every tile for a counter's every tick is not worth it
    const span = Math.max(1e-9, hi - lo);
    if (lo < r.lo || hi > r.hi || span < 0.6 * (r.hi - r.lo)) {
      r.lo = lo - span * 0.1; r.hi = hi + span * 0.1;
      for (const g of grids) if (fieldOf(g) === f) g.grid.all();
    }
  }
  if (unknown !== wasUnknown) { wasUnknown = unknown; for (const g of grids) g.grid.all(); }
  for (const k of kpiRows) k.row.render(stats, health.age(), unknown);
  setTimeout(tickCharts, 0);
});
const tickCharts = timed(() => {
  // charts: the rows they aggregate, sampled honestly
  const rows = [];
  for (const [topic, st] of client.topics) if (!meta.isAlarmTopic(topic)) rows.push([topic, st, stateOf(topic)]);
  const f = autoField();
  // a chart vouches for nothing while there is trouble: gaps from its first second
  for (const t of trends) t.panel.sample(choice("field") || f, t.filter === "#" ? rows : rows.filter((r) => matches(t.filter, r[0])), !health.reason, !!choice("field"));
  setTimeout(() => tickPanels(rows, f), 0);
});
const tickPanels = (rows, f) => timed(() => {
  for (const w of worst) {
    if (w.page !== current) continue;
    const field = w.field === "auto" ? f : w.field;
    const sel = w.filter === "#" ? rows : rows.filter((r) => matches(w.filter, r[0]));
    w.table.render(sel, field !== "state" ? field : null, (topic) => {
      const v = valueOf(topic, field);
      return { name: v.name, group: topic.slice(0, Math.max(0, topic.lastIndexOf("/"))), text: v.text, unit: v.unit };
    });
  }
  if (alarmsDirty) renderAlarms();
  // the field selector and the colour key
  const fields = meta.fields();
  const pageGrid = grids.find((x) => x.page === current);
  const shownField = pageGrid ? fieldOf(pageGrid) : autoField();
  if (`${fields.join()}|${shownField}` !== fieldsKey) {
    fieldsKey = `${fields.join()}|${shownField}`;
    const sel = $("field");
    const g = grids.find((x) => x.page === current);
    const chosen = (g ? fieldOf(g) : autoField()) || "state";
    sel.replaceChildren(...["state", ...fields].map((name) => new Option(name === "state" ? "state only" : meta.fieldLabel(name), name, false, name === chosen)));
  }
  const lf = pageGrid ? fieldOf(pageGrid) : null;
  const r = lf && ranges.get(lf);
  const bounds = r ? r.bounds() : null;
  const fmt = (v) => meta.format(lf, v);
  const key = `${lf}|${bounds && fmt(bounds[0])}|${bounds && fmt(bounds[1])}`;
  if (key !== legendKey) {
    legendKey = key;
    renderLegend($("legend"), { field: lf ? meta.fieldLabel(lf) : "", unit: meta.unit(lf), bounds, byState: !lf || lf === "state", format: fmt });
  }
  header();
  schedule();
  if (tickMs.length >= 60) tickMs.shift();
  tickMs.push(tickLongest);
})();
setInterval(tick, 1000);
$("field").addEventListener("change", (e) => {
  choose("field", e.target.value);
  for (const g of grids) g.grid.all();
  tick();
});
window.addEventListener("hashchange", () => {
  choices = new URLSearchParams(location.hash.slice(1));
  picked = choices.get("field");
  showPage(Number(choice("page") || 0));
  for (const g of grids) g.grid.all();
  tick();
});

// -- for people debugging a wall, and for the tests ----------------------------------------
window.gatewayClient = client;
window.wall = {
  config: wall,
  meta,
  health,
  tile: (topic) => { for (const g of grids) { const t = g.grid.tile(topic); if (t) return t; } return null; },
  // tiles showing a device's data (not unknown): what "the wall is up" means in tests
  tilesWithValues: () => grids.length ? [...grids[0].grid.tiles.values()].filter((t) => t.key && t.state !== "unknown").length : 0,
  drawMs: () => drawMs.slice(),
  firstPaint: () => firstPaint,
  history: historyLoader,
  tickMs: () => tickMs.slice(),
  boxes: () => grids.filter((g) => g.page === current).flatMap((g) => g.grid.boxes()),
  layout: () => grids.filter((g) => g.page === current).map((g) => ({ side: g.grid.plan?.side, wide: g.grid.plan?.wide })),
  trends: () => trends.map((t) => t.panel.latest()),
  historyAt: () => trends.map((t) => t.panel.prefilledAt), // performance.now() or null
  series: (i, group) => trends[i]?.panel.seriesOf(group),
  page: () => current,
  showPage,
};
// -- a named wall (?wall=NAME) reports its health and takes actions (wallreport.js) --------
if (wallName(params)) {
  window.wall.reporter = new WallReporter(client, {
    name: wallName(params), token: TOKEN, dataAge: () => health.age(), page: () => pages[current]?.name,
    selfReload: params.get("selfreload") === "1",
    showPage: (p) => {
      const i = pages.findIndex((x) => x.name === String(p));
      const n = i >= 0 ? i : Number(p);
      if (!Number.isInteger(n) || n < 0 || n >= pages.length) return false;
      showPage(n);
      return true;
    },
  });
}
client.start();
tick();
