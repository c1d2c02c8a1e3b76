// The wall's own health, told to the gateway; the operators' actions, carried out.
//
// A wall named in its URL (?wall=NAME; "auto" is not a name) sends a `report` every
// welcome.limits.wall_report_s seconds (30 by default) and at once after a reconnect or
// when it detects trouble (docs/protocol.md, "Wall reports"): the page shown, the
// transport, the last state message applied, the data age, frames per second and the
// slowest frame, the JS heap where the browser exposes it, visibility, reconnects.
// Over WebSocket the report is a message; over Server-Sent Events a POST to
// api/walls/report (the stream carries ?wall=NAME so that actions reach it).
//
// Frames are measured for FPS_SAMPLE_MS before each report with requestAnimationFrame
// (the rest of the time no frame is asked for: an idle wall stays idle), and long
// tasks between reports (PerformanceObserver where supported, and the lateness of a
// 250 ms timer) count as slow frames.
//
// Trouble the wall detects itself, reported in `trouble` for TROUBLE_KEEP_MS:
// * no answer to a ping within 5 s while the WebSocket says OPEN: the client abandons
//   it and reconnects (client.js), the report says why;
// * on an event stream, no event for two heartbeats (the gateway sends a `pong` event
//   every heartbeat to a wall's stream): a proxy buffers the stream;
// * fewer than MIN_FPS frames per second while visible, or a frame over SLOW_FRAME_MS;
// * the JS heap grown past HEAP_FACTOR times its level one minute after load and by
//   more than HEAP_GROWTH_BYTES.
// With ?selfreload=1 the last two make the wall reload itself at a quiet moment: no
// state message for QUIET_MS, or the page hidden; at the latest QUIET_WAIT_MS after.
//
// Actions (`action` messages): reload (acknowledged first; the page comes back with the
// same name and says `reloaded_by`), page (by name or number), banner (text, ttl_s).

export const FPS_SAMPLE_MS = 2000;
export const MIN_FPS = 5;
export const SLOW_FRAME_MS = 1000;
export const HEAP_FACTOR = 2;
export const HEAP_GROWTH_BYTES = 200 * 1024 * 1024;
const HEAP_BASELINE_MS = 60000;
const TROUBLE_KEEP_MS = 60000;
const QUIET_MS = 2000;
const QUIET_WAIT_MS = 600000;
const RELOADED_KEY = "wallReloadedBy";
const WATCH_MS = 250; // the watchdog's period: its lateness is a blocked main thread

export function wallName(params) {
  const name = params.get("wall");
  return name && name !== "auto" && /^[A-Za-z0-9 ._:-]{1,64}$/.test(name) ? name : null;
}

export class WallReporter {
  // page(): the page shown; showPage(p): show page p (a name or number), true if done;
  // dataAge(): seconds or null
  constructor(client, { name, token = null, page = () => null, showPage = () => false,
                        dataAge = () => null, selfReload = false } = {}) {
    this.client = client;
    this.name = name;
    this.token = token;
    this.page = page;
    this.showPage = showPage;
    this.dataAge = dataAge;
    this.selfReload = selfReload;
    this.reportMs = 30000;
    this.minReportMs = 2000;
    this.lastSent = 0;
    this.pending = null; // a report waiting for the minimum interval
    this.trouble = null; // {text, at}
    this.frames = { fps: null, slowest: 0 };
    this.longest = 0; // the longest task since the last report
    this.heapBase = null;
    this.loadedAt = Date.now();
    this.lastWatch = 0;
    this.reloadedBy = sessionStorage.getItem(RELOADED_KEY);
    sessionStorage.removeItem(RELOADED_KEY);
    this.banner = null;
    this.bannerTimer = null;
    this.reloadPlanned = false;
    this.sent = 0;
    client.wallName = name; // the event stream names its wall (client.js)
    client.addEventListener("action", (e) => this._act(e.detail));
    client.addEventListener("trouble", (e) => this.troubleSeen(e.detail));
    client.addEventListener("status", (e) => {
      if (e.detail.status === "open") {
        const limits = client.limits || {};
        if (limits.wall_report_s) this.reportMs = limits.wall_report_s * 1000;
        if (limits.wall_min_report_s) this.minReportMs = limits.wall_min_report_s * 1000;
        this.soon(); // after a (re)connect: at once
      }
    });
    document.addEventListener("visibilitychange", () => this.soon());
    try {
      new PerformanceObserver((list) => {
        for (const t of list.getEntries()) this.longest = Math.max(this.longest, t.duration);
      }).observe({ type: "longtask", buffered: false });
    } catch { /* no long-task timing here: frames only */ }
    this._schedule();
    setInterval(() => this._watch(), WATCH_MS);
  }

  troubleSeen(text) {
    this.trouble = { text, at: Date.now() };
    console.warn("wall trouble:", text);
    this.soon();
  }

  // -- reports -------------------------------------------------------------------------------

  _schedule(due = Math.max(0, this.lastSent + this.reportMs - FPS_SAMPLE_MS - Date.now())) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._sample().then(() => this._send()), due);
  }

  // the earliest the gateway takes the next report (a margin over its minimum interval)
  _earliest() {
    return this.lastSent + this.minReportMs + 250;
  }

  soon() {
    if (this.pending) return;
    const wait = Math.max(0, this._earliest() - Date.now());
    this.pending = setTimeout(() => { this.pending = null; this._send(); }, wait);
  }

  // frames per second and the slowest frame over FPS_SAMPLE_MS (a hidden page draws none)
  _sample() {
    if (document.visibilityState !== "visible") {
      this.frames = { fps: 0, slowest: 0 };
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const start = performance.now();
      let last = start;
      let count = 0;
      let slowest = 0;
      const step = (t) => {
        slowest = Math.max(slowest, t - last);
        last = t;
        count += 1;
        if (t - start < FPS_SAMPLE_MS) requestAnimationFrame(step);
        else {
          this.frames = { fps: (count * 1000) / (t - start), slowest };
          resolve();
        }
      };
      requestAnimationFrame(step);
    });
  }

  report() {
    const c = this.client;
    const r = { type: "report", wall: this.name, transport: c.transport,
                visible: document.visibilityState === "visible",
                reconnects: Math.max(0, c.stats.connects - 1) };
    const page = this.page();
    if (page) r.page = String(page).slice(0, 128);
    const at = c.lastApplied;
    if (c.epoch) r.epoch = c.epoch;
    if (at) Object.assign(r, { topic: at.topic, seq: at.seq, rx: at.rx });
    const age = this.dataAge();
    if (age !== null && Number.isFinite(age)) r.data_age_s = Math.round(age * 10) / 10;
    if (this.frames.fps !== null) r.fps = Math.min(1000, Math.round(this.frames.fps * 10) / 10);
    // a long task before the first frame sample counts too (the report resets it)
    if (this.frames.fps !== null || this.longest > 0) {
      r.slowest_frame_ms = Math.round(Math.max(this.frames.slowest, this.longest));
    }
    const heap = performance.memory?.usedJSHeapSize;
    if (heap) r.heap_bytes = heap;
    if (this.trouble && Date.now() - this.trouble.at < TROUBLE_KEEP_MS) {
      r.trouble = this.trouble.text.slice(0, 200);
    }
    if (this.reloadedBy) r.reloaded_by = this.reloadedBy;
    return r;
  }

  _send() {
    if (this.client.status !== "open") { this._schedule(this.reportMs); return; }
    if (Date.now() < this._earliest()) { this._schedule(this._earliest() - Date.now()); return; }
    const r = this.report();
    this.lastSent = Date.now();
    this.longest = 0;
    this.sent += 1;
    this._post(r);
    this._judge(r);
    this._schedule();
  }

  _post(msg) {
    const c = this.client;
    if (!c.sse) { c._send(msg); return Promise.resolve(); }
    const url = new URL("api/walls/report", location.href);
    const headers = { "Content-Type": "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return fetch(url, { method: "POST", headers, body: JSON.stringify(msg), keepalive: true })
      .catch(() => {});
  }

  // -- trouble the wall sees itself --------------------------------------------------------

  _watch() {
    const c = this.client;
    // a timer that fires late measures a blocked main thread, where long task timing
    // is not available (or not attributed)
    const now = performance.now();
    if (this.lastWatch && document.visibilityState === "visible") {
      this.longest = Math.max(this.longest, now - this.lastWatch - WATCH_MS);
    }
    this.lastWatch = now;
    // an event stream delivers a `pong` event every heartbeat to a wall: none for two
    // heartbeats while it says open means something between us holds the events back
    if (c.sse && c.status === "open" && Date.now() - c.lastMessageAt > 2 * c.heartbeatMs) {
      if (!this.trouble || Date.now() - this.trouble.at > 2 * c.heartbeatMs) {
        this.troubleSeen("event stream: no heartbeat for two intervals (a proxy buffering it?)");
      }
    }
    if (this.reloadPlanned) this._reloadIfQuiet();
  }

  _judge(r) {
    const heap = r.heap_bytes;
    if (heap && this.heapBase === null && Date.now() - this.loadedAt > HEAP_BASELINE_MS) {
      this.heapBase = heap;
    }
    let why = null;
    if (r.visible && r.fps !== undefined && r.fps < MIN_FPS) why = `only ${r.fps} frames per second`;
    else if (r.visible && r.slowest_frame_ms > SLOW_FRAME_MS) why = `a frame took ${r.slowest_frame_ms} ms`;
    else if (heap && this.heapBase && heap > HEAP_FACTOR * this.heapBase
             && heap - this.heapBase > HEAP_GROWTH_BYTES) {
      why = `JS heap grew from ${mib(this.heapBase)} to ${mib(heap)}`;
    }
    if (!why) return;
    this.troubleSeen(why);
    if (this.selfReload && !this.reloadPlanned) {
      this.reloadPlanned = Date.now();
    }
  }

  _reloadIfQuiet() {
    const c = this.client;
    const quiet = document.visibilityState !== "visible" ||
      Date.now() - (c.lastAppliedAt || 0) > QUIET_MS;
    if (quiet || Date.now() - this.reloadPlanned > QUIET_WAIT_MS) {
      this.reloadPlanned = false;
      sessionStorage.setItem(RELOADED_KEY, "self");
      location.reload();
    }
  }

  // -- actions -------------------------------------------------------------------------------

  async _act(m) {
    let ok = true;
    let detail = "";
    if (m.action === "reload") {
      detail = "reloading";
    } else if (m.action === "page") {
      ok = !!this.showPage(m.page);
      detail = ok ? `showing ${m.page}` : `no page ${m.page}`;
      this.soon();
    } else if (m.action === "banner") {
      this._banner(m.text || "", m.ttl_s || 0);
      detail = m.text ? "shown" : "removed";
    } else {
      ok = false;
      detail = `unknown action ${m.action}`;
    }
    await this._post({ type: "action_ack", id: m.id, ok, detail });
    if (m.action === "reload") {
      sessionStorage.setItem(RELOADED_KEY, m.id);
      await this._flushed();
      location.reload();
    }
  }

  // the acknowledgement on its way before the page goes
  async _flushed() {
    const ws = this.client._ws;
    for (let i = 0; ws && ws.bufferedAmount > 0 && i < 50; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  _banner(text, ttlS) {
    clearTimeout(this.bannerTimer);
    if (!this.banner) {
      // a row of its own below the wall (style.css): the wall gives it the room, it
      // covers no tile (fixed over the bottom, it hid the bottom row's devices)
      const b = document.createElement("div");
      b.id = "wall-message";
      b.setAttribute("role", "alert");
      document.body.append(b);
      this.banner = b;
    }
    this.banner.textContent = text;
    this.banner.hidden = !text;
    if (text && ttlS > 0) this.bannerTimer = setTimeout(() => { this.banner.hidden = true; }, ttlS * 1000);
  }
}

function mib(n) {
  return `${(n / 1048576).toFixed(0)} MiB`;
}
