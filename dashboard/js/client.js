// GatewayClient: the gateway's protocol v1 in the browser (docs/protocol.md).
//
// It keeps a local copy of the subscribed topics and applies snapshots and deltas by
// the protocol's rules (the same as gateway/core/mirror.py):
//   snapshot: replaces the copy when its seq is newer;
//   delta with seq <= held: old news, skipped;
//   delta with base <= held < seq: applied (set, unset, online/stale, ts/rx);
//   delta with base > held (or an unknown topic): a gap -> ask for a resync (resume).
// It reconnects by itself with exponential backoff and full jitter (capped), resumes
// with (epoch, seq) when the gateway's epoch is unchanged and starts afresh when it is
// not, sends an application ping every heartbeat and reconnects when nothing arrived
// for two heartbeats (a half-open connection), and reports its status.
//
// Usage:
//   const client = new GatewayClient({ url, filters: ["#"], rateHz: 10, token });
//   client.addEventListener("change", (e) => ...e.detail.topics...);  // Set of topics
//   client.addEventListener("status", (e) => ...e.detail.status...);  // connecting|open|closed
//   client.start();
//   client.topics.get("berlin/line1/env-00000")  // {seq, fields, online, stale, ts, rx}

const RESUME_CHUNK = 1000;

export class GatewayClient extends EventTarget {
  constructor({ url, filters = ["#"], rateHz = null, token = null, backoffBaseMs = 500,
                backoffCapMs = 30000, stableMs = 10000, WebSocketImpl = WebSocket } = {}) {
    super();
    this.url = url;
    this.filters = filters;
    this.rateHz = rateHz;
    this.token = token;
    this.backoffBaseMs = backoffBaseMs;
    this.backoffCapMs = backoffCapMs;
    this.stableMs = stableMs;
    this.WebSocketImpl = WebSocketImpl;
    this.topics = new Map();
    this.epoch = null;
    this.status = "idle";
    this.attempt = 0;
    this.heartbeatMs = 15000;
    this.lastMessageAt = 0;
    this.stats = { connects: 0, resumes: 0, gaps: 0, applied: 0, skipped: 0, closes: [] };
    this._ws = null;
    this._stopped = false;
    this._timers = [];
  }

  start() {
    this._stopped = false;
    this._connect();
  }

  stop() {
    this._stopped = true;
    this._clearTimers();
    if (this._ws) this._ws.close(1000, "bye");
  }

  _setStatus(status, detail = {}) {
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: { status, ...detail } }));
  }

  _clearTimers() {
    for (const t of this._timers) clearInterval(t);
    this._timers = [];
  }

  _wsUrl() {
    if (!this.token) return this.url;
    const u = new URL(this.url, location.href);
    u.searchParams.set("access_token", this.token);
    return u.toString();
  }

  _connect() {
    this._setStatus("connecting", { attempt: this.attempt });
    const openedAt = Date.now();
    let ws;
    try {
      ws = new this.WebSocketImpl(this._wsUrl(), ["telemetry.v1"]);
    } catch (err) {
      this._scheduleReconnect(openedAt);
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = (ev) => {
      this._clearTimers();
      this.stats.closes.push(ev.code);
      if (this.stats.closes.length > 20) this.stats.closes.shift(); // bounded over days
      if (this._ws === ws) this._ws = null;
      this._setStatus("closed", { code: ev.code, reason: ev.reason });
      if (!this._stopped && ev.code !== 4001) this._scheduleReconnect(openedAt);
    };
    ws.onerror = () => {}; // onclose follows with the details
  }

  _scheduleReconnect(openedAt) {
    if (Date.now() - openedAt >= this.stableMs) this.attempt = 0;
    const cap = Math.min(this.backoffCapMs, this.backoffBaseMs * 2 ** this.attempt);
    const delay = Math.random() * cap; // full jitter
    this.attempt += 1;
    setTimeout(() => { if (!this._stopped) this._connect(); }, delay);
  }

  _send(obj) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(obj));
  }

  _onWelcome(msg) {
    this.heartbeatMs = msg.heartbeat_s * 1000;
    const resumable = msg.epoch === this.epoch && this.topics.size > 0;
    if (!resumable && this.epoch !== null) {
      const dropped = new Set(this.topics.keys());
      this.topics.clear(); // another epoch: nothing can be resumed
      this._changed(dropped);
    }
    this.epoch = msg.epoch;
    if (resumable) {
      const entries = [...this.topics].map(([t, v]) => [t, v.seq]);
      for (let i = 0; i < entries.length; i += RESUME_CHUNK) {
        this._send({ type: "resume", epoch: msg.epoch,
                     topics: Object.fromEntries(entries.slice(i, i + RESUME_CHUNK)) });
      }
      this.stats.resumes += 1;
    }
    const sub = { type: "subscribe", id: "main", filters: this.filters };
    if (this.rateHz) sub.rate_hz = this.rateHz;
    this._send(sub);
    this.stats.connects += 1;
    this._setStatus("open", { epoch: msg.epoch, resumed: resumable });
    let pingId = 0;
    this._timers.push(setInterval(() => {
      if (Date.now() - this.lastMessageAt > 2 * this.heartbeatMs) {
        this._ws?.close(4000, "no data: half-open?"); // reconnect
        return;
      }
      this._send({ type: "ping", id: ++pingId });
    }, this.heartbeatMs));
  }

  _onMessage(data) {
    this.lastMessageAt = Date.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "welcome") return this._onWelcome(msg);
    const items = msg.type === "batch" ? msg.items : [msg];
    const changed = new Set();
    const gaps = {};
    for (const m of items) {
      if (m.type === "snapshot" || m.type === "delta") {
        const outcome = this.apply(m);
        if (outcome === "applied") changed.add(m.topic);
        else if (outcome === "gap") gaps[m.topic] = this.topics.get(m.topic)?.seq ?? 0;
      } else if (m.type === "error") {
        console.warn("gateway error", m.code, m.message);
      }
    }
    if (Object.keys(gaps).length && this.epoch) {
      this._send({ type: "resume", epoch: this.epoch, topics: gaps });
    }
    if (changed.size) this._changed(changed);
  }

  _changed(topics) {
    this.dispatchEvent(new CustomEvent("change", { detail: { topics } }));
  }

  // The protocol's rules for one state message; returns applied|skipped|gap.
  apply(m) {
    const held = this.topics.get(m.topic);
    if (m.type === "snapshot") {
      if (held && held.seq >= m.seq) { this.stats.skipped += 1; return "skipped"; }
      this.topics.set(m.topic, { seq: m.seq, fields: { ...m.fields }, online: m.online,
                                 stale: m.stale, ts: m.ts, rx: m.rx });
      this.stats.applied += 1;
      return "applied";
    }
    if (!held || m.base > held.seq) { this.stats.gaps += 1; return "gap"; }
    if (m.seq <= held.seq) { this.stats.skipped += 1; return "skipped"; }
    Object.assign(held.fields, m.set);
    for (const name of m.unset || []) delete held.fields[name];
    if ("online" in m) { held.online = m.online; held.stale = m.stale; }
    held.seq = m.seq;
    held.ts = m.ts;
    held.rx = m.rx;
    this.stats.applied += 1;
    return "applied";
  }
}
