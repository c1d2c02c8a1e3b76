// GatewayClient: the gateway's protocol v1 in the browser (docs/protocol.md).
//
// It keeps a local copy of the subscribed topics and applies snapshots and deltas by
// the protocol's rules (the same as gateway/core/mirror.py):
//   snapshot: replaces the copy when its seq is newer, or always when it says resync;
//   delta with seq <= held: old news, skipped;
//   delta with base <= held < seq: applied (set, unset, online/stale, ts/rx);
//   delta with base > held (or an unknown topic): a gap -> ask for a resync (resume).
// It reconnects by itself with exponential backoff and full jitter (capped), resumes
// with (epoch, seq) when the gateway's epoch is unchanged and starts afresh when it is
// not, sends an application ping every heartbeat (and after 5 s without a message) and
// abandons the socket and reconnects when a ping brings nothing back within 5 s (a
// half-open connection, a hung gateway), and reports its status.
//
// When the WebSocket never gets an answer (twice in a row, as behind a proxy that
// refuses the upgrade or passes no frames), it falls back to Server-Sent Events at /sse
// (transport: "auto", the default; "ws" or "sse" force one); once a WebSocket was
// answered on the page, failed attempts are the gateway going away (a restart), and only
// 30 s of them make it fall back (shouldFallBack). The same messages arrive; EventSource
// resumes with Last-Event-ID on its own; a gap there means a fresh stream (a snapshot).
// After a fallback the client keeps probing WebSocket in the background (after 2 s,
// then doubling up to 60 s): once a probe is answered it leaves the event stream and
// reconnects over WebSocket (resuming by epoch and seq), so a fallback does not outlive
// its cause.
//
// Usage:
//   const client = new GatewayClient({ url, filters: ["#"], rateHz: 10, token });
//   client.addEventListener("change", (e) => ...e.detail.topics...);  // Set of topics
//   client.addEventListener("status", (e) => ...e.detail.status...);  // connecting|open|closed
//   client.transport  // "ws" or "sse"
//   client.start();
//   client.topics.get("berlin/line1/env-00000")  // {seq, fields, online, stale, ts, rx}

import { takeFragmentToken } from "./token.js";

const RESUME_CHUNK = 1000;

// Close codes after which reconnecting cannot help: the client, its configuration or
// its token must change first (docs/protocol.md, "WebSocket close codes"; a test keeps
// this list equal to the gateway's table, gateway/core/disconnect.py). Any other code
// (1006, 1012, 4008, our own 4000...) means: reconnect with backoff.
export const NO_RECONNECT = Object.freeze([1000, 1002, 1003, 1007, 1008, 1009, 4001, 4400]);

export function shouldReconnect(code) {
  return !NO_RECONNECT.includes(code);
}

// After close 1012 ("service restart"): the first attempt within this window (a
// restart takes about a second; thousands of screens spread over it), and for
// RESTART_GRACE_MS attempts that never open do not grow the backoff (docs/protocol.md,
// "Reconnecting"; the same rule as gateway/client.py, next_delay).
export const RESTART_WINDOW_MS = 1000;
// A ping goes out when nothing came for PING_QUIET_MS (and every heartbeat); no message
// within PING_WAIT_MS (at most a heartbeat) of it: the connection is dead, whatever
// the socket says. A wall on a live feed hears something every tick, so a hung
// gateway or a dead path is noticed within about 10 s instead of two heartbeats.
export const PING_QUIET_MS = 5000;
export const PING_WAIT_MS = 5000;
export const RESTART_GRACE_MS = 30000;

// When transport "auto" gives up on WebSocket for Server-Sent Events: after two attempts
// in a row that got no answer (no welcome: a network that refuses the upgrade, or a
// proxy that completes it and passes no frames). Once a WebSocket has been answered on
// this page the network lets it through, and attempts that fail are the gateway going
// away (a restart, a crash, a closed port): the wall stays on WebSocket through them
// unless they keep failing for RESTART_GRACE_MS (the rule of centrifuge-js, which keeps
// a transport that once worked; the grace is for a network that starts refusing
// upgrades later). failingForMs: since the first of the failed attempts began.
export function shouldFallBack({ failures, worked, failingForMs }) {
  return failures >= 2 && (!worked || failingForMs >= RESTART_GRACE_MS);
}

// The wait before the next attempt and the attempt count after it. restarted: the
// connection was just closed with 1012; opened: the last attempt opened a connection;
// sinceRestartMs: time since the last 1012; random: a number in [0, 1).
export function reconnectDelay({ attempt, opened, restarted, sinceRestartMs, baseMs, capMs,
                                 random = Math.random }) {
  if (restarted) return { delay: random() * RESTART_WINDOW_MS, attempt: 0 };
  if (!opened && sinceRestartMs < RESTART_GRACE_MS) {
    // refused while the gateway restarts: a closed port costs it nothing, so retry
    // within the first window instead of backing off further
    return { delay: random() * baseMs, attempt };
  }
  return { delay: random() * Math.min(capMs, baseMs * 2 ** attempt), attempt: attempt + 1 };
}

export class GatewayClient extends EventTarget {
  constructor({ url, filters = ["#"], rateHz = null, token = null, backoffBaseMs = 500,
                backoffCapMs = 30000, stableMs = 10000, WebSocketImpl = WebSocket,
                transport = "auto", sseUrl = null, historyS = 0,
                connectTimeoutMs = 10000 } = {}) {
    super();
    this.historyS = historyS; // chart history asked with every subscribe (0: none)
    this.meta = null; // welcome.meta: {url, version} of the gateway's metadata
    this._acks = new Map(); // ack_alarm request id -> {msg, resolve, timer}
    this.url = url;
    this.sseUrl = sseUrl;
    this.transport = transport === "sse" ? "sse" : "ws";
    this.fallback = transport === "auto";
    this.wsFailures = 0; // WebSocket attempts in a row that got no answer (no welcome)
    this.wsFailingSince = null; // when the first of them began (Date.now())
    this.wsWorked = false; // a WebSocket was answered on this page: the network lets it through
    this._sseAnsweredAt = null; // the current event stream's first message (Date.now())
    this.restartAt = -Infinity; // when the gateway last said "restarting" (close 1012)
    this.filters = filters;
    this.rateHz = rateHz;
    this.token = token ?? takeFragmentToken(); // #token=... (token.js)
    this.backoffBaseMs = backoffBaseMs;
    this.backoffCapMs = backoffCapMs;
    this.stableMs = stableMs;
    // from the attempt to the first message (the welcome): a gateway or proxy that
    // accepts and never answers is a failed attempt, then the next one (docs/protocol.md)
    this.connectTimeoutMs = connectTimeoutMs;
    this.WebSocketImpl = WebSocketImpl;
    this.topics = new Map();
    this.epoch = null;
    this.status = "idle";
    this.attempt = 0;
    this.heartbeatMs = 15000;
    this.lastMessageAt = 0;
    this.stats = { connects: 0, resumes: 0, gaps: 0, applied: 0, skipped: 0, closes: [] };
    this._ws = null;
    this._es = null;
    this._stopped = false;
    this._timers = [];
    this._probe = null; // {timer, ws, delay}: the background WebSocket probe while on SSE
  }

  start() {
    this._stopped = false;
    this._connect();
  }

  stop() {
    this._stopped = true;
    this._clearTimers();
    this._stopProbe();
    if (this._ws) this._ws.close(1000, "bye");
    if (this._es) this._es.close();
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

  _sseStreamUrl() {
    const u = this.sseUrl ? new URL(this.sseUrl, location.href) : new URL(this.url, location.href);
    if (!this.sseUrl) {
      u.protocol = u.protocol === "wss:" ? "https:" : "http:";
      u.pathname = u.pathname.replace(/\/ws$/, "/sse");
    }
    u.search = "";
    for (const f of this.filters) u.searchParams.append("filter", f);
    if (this.rateHz) u.searchParams.set("rate", String(this.rateHz));
    if (this.token) u.searchParams.set("access_token", this.token);
    if (this.wallName) u.searchParams.set("wall", this.wallName); // wallreport.js
    return u.toString();
  }

  _connectSse() {
    const es = new EventSource(this._sseStreamUrl());
    this._es = es;
    this._sseAnsweredAt = null; // the stream's first message (its welcome)
    es.onmessage = (ev) => {
      if (this._es !== es) return;
      this._sseAnsweredAt ??= Date.now();
      this._onMessage(ev.data);
    };
    es.onerror = () => {
      if (this._es !== es) return;
      this._setStatus(es.readyState === EventSource.CLOSED ? "closed" : "connecting",
                      { transport: "sse" });
      if (es.readyState === EventSource.CLOSED) { // refused (401, 503...): our backoff
        this._es = null;
        if (!this._stopped) this._scheduleReconnect(this._sseAnsweredAt);
      } // else EventSource reconnects by itself, with Last-Event-ID
    };
  }

  _restartSse(code) {
    // a close event, or a gap: end this stream and open a fresh one (a snapshot)
    const es = this._es;
    this._es = null;
    if (es) es.close();
    this.stats.closes.push(code);
    if (this.stats.closes.length > 20) this.stats.closes.shift();
    this._setStatus("closed", { code, transport: "sse" });
    const restarted = code === 1012; // the same restart rule as on WebSocket
    if (restarted) this.restartAt = Date.now();
    if (!this._stopped && shouldReconnect(code)) {
      this._scheduleReconnect(this._sseAnsweredAt, true, restarted);
    }
  }

  _connect() {
    this._setStatus("connecting", { attempt: this.attempt, transport: this.transport });
    if (this._stopped) return; // by a listener of that status
    if (this.transport === "sse") return this._connectSse();
    const startedAt = Date.now();
    let opened = false;
    let ws;
    try {
      ws = new this.WebSocketImpl(this._wsUrl(), ["telemetry.v1"]);
    } catch (err) {
      this._scheduleReconnect(null);
      return;
    }
    this._ws = ws;
    let welcomeTimer = setTimeout(() => {
      welcomeTimer = null;
      if (this._ws === ws) ws.close(); // onclose follows: a failed attempt
    }, this.connectTimeoutMs);
    let answeredAt = null; // when the gateway's first message came over this socket
    ws.onopen = () => { opened = true; };
    ws.onmessage = (ev) => {
      if (welcomeTimer !== null) { clearTimeout(welcomeTimer); welcomeTimer = null; }
      if (answeredAt === null) {
        answeredAt = Date.now();
        this.wsFailures = 0;
        this.wsFailingSince = null;
        this.wsWorked = true;
      }
      this._onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (welcomeTimer !== null) { clearTimeout(welcomeTimer); welcomeTimer = null; }
      this._clearTimers();
      if (answeredAt === null && this.fallback && !this._stopped) { // stop(): no failure
        this.wsFailures += 1;
        this.wsFailingSince ??= startedAt;
        if (shouldFallBack({ failures: this.wsFailures, worked: this.wsWorked,
                             failingForMs: Date.now() - this.wsFailingSince })) {
          this.transport = "sse"; // the upgrade does not succeed here: events instead
          this.attempt = 0;
        }
      }
      this.stats.closes.push(ev.code);
      if (this.stats.closes.length > 20) this.stats.closes.shift(); // bounded over days
      if (this._ws === ws) this._ws = null;
      const restarted = opened && ev.code === 1012;
      if (restarted) this.restartAt = Date.now(); // back shortly
      this._setStatus("closed", { code: ev.code, reason: ev.reason });
      if (!this._stopped && shouldReconnect(ev.code)) {
        this._scheduleReconnect(answeredAt, opened, restarted);
      }
    };
    ws.onerror = () => {}; // onclose follows with the details
  }

  // answeredAt: when the connection that ended got its first message (null: none). The
  // attempt count starts afresh only after a connection that was answered stayed up
  // stableMs: an attempt that timed out waiting for its welcome (connectTimeoutMs) is a
  // failure, and a hung gateway's walls back off to the cap instead of retrying it
  // every connectTimeoutMs.
  _scheduleReconnect(answeredAt, opened = true, restarted = false) {
    if (answeredAt !== null && Date.now() - answeredAt >= this.stableMs) this.attempt = 0;
    const { delay, attempt } = reconnectDelay({
      attempt: this.attempt, opened, restarted, sinceRestartMs: Date.now() - this.restartAt,
      baseMs: this.backoffBaseMs, capMs: this.backoffCapMs,
    });
    this.attempt = attempt;
    setTimeout(() => { if (!this._stopped) this._connect(); }, delay);
  }

  // -- back to WebSocket after a fallback ------------------------------------------------

  _scheduleProbe(delay) {
    const probe = { delay, ws: null, timer: null };
    this._probe = probe;
    probe.timer = setTimeout(() => {
      if (this._probe !== probe || this._stopped || this.transport !== "sse") return;
      let ws;
      try {
        ws = new this.WebSocketImpl(this._wsUrl(), ["telemetry.v1"]);
      } catch {
        this._scheduleProbe(Math.min(60000, delay * 2));
        return;
      }
      probe.ws = ws;
      // the welcome, not the upgrade, says WebSocket works here (a proxy may complete
      // the upgrade and pass no frames); none within the connect timeout: a failed probe
      probe.timer = setTimeout(() => ws.close(), this.connectTimeoutMs);
      ws.onmessage = () => {
        clearTimeout(probe.timer);
        ws.onmessage = null;
        ws.onclose = null;
        ws.close(1000, "probe");
        if (this._probe !== probe || this._stopped) return;
        this._probe = null;
        this.stats.wsReturns = (this.stats.wsReturns || 0) + 1;
        const es = this._es; // leave the event stream; the copy resumes over WebSocket
        this._es = null;
        if (es) es.close();
        this.transport = "ws";
        this.wsFailures = 0;
        this.wsFailingSince = null;
        this.attempt = 0;
        this._connect();
      };
      ws.onerror = () => {};
      ws.onclose = () => {
        clearTimeout(probe.timer);
        if (this._probe === probe) this._scheduleProbe(Math.min(60000, delay * 2));
      };
    }, delay * (0.5 + Math.random() / 2)); // jittered: a fleet of walls does not probe at once
  }

  _stopProbe() {
    const probe = this._probe;
    this._probe = null;
    if (probe) {
      clearTimeout(probe.timer);
      if (probe.ws) { probe.ws.onclose = null; probe.ws.close(1000, "bye"); }
    }
  }

  _send(obj) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(obj));
  }

  get sse() {
    return this.transport === "sse";
  }

  _onWelcome(msg) {
    this.heartbeatMs = msg.heartbeat_s * 1000;
    this.limits = msg.limits || {};
    this.meta = msg.meta || null;
    const resumable = msg.epoch === this.epoch && this.topics.size > 0;
    if (!resumable && this.epoch !== null) {
      const dropped = new Set(this.topics.keys());
      this.topics.clear(); // another epoch: nothing can be resumed
      this._changed(dropped);
    }
    this.epoch = msg.epoch;
    if (this.sse) { // the stream was subscribed by its URL and resumes by Last-Event-ID
      this.stats.connects += 1;
      this._setStatus("open", { epoch: msg.epoch, transport: "sse" });
      if (this.fallback && !this._probe) this._scheduleProbe(2000);
      return;
    }
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
    if (this.historyS > 0) sub.history_s = this.historyS;
    this._send(sub);
    for (const a of this._acks.values()) this._send(a.msg); // same id: idempotent
    this.stats.connects += 1;
    this._setStatus("open", { epoch: msg.epoch, resumed: resumable });
    // A dead connection, however the socket looks (a half-open TCP connection, a proxy
    // that stopped forwarding, a gateway that hangs): a ping every heartbeat, and one as
    // soon as nothing came for PING_QUIET_MS; no message within PING_WAIT_MS of a ping
    // means dead. A hung gateway looked live for as long as it hung (its close
    // handshake never completes: onclose came only when it resumed), so the socket is
    // abandoned at once, not closed and waited for.
    const ws = this._ws;
    const wait = Math.min(PING_WAIT_MS, this.heartbeatMs);
    let pingId = 0;
    let pingAt = 0; // the last ping sent; answered once a message came after it
    this._timers.push(setInterval(() => {
      const now = Date.now();
      const waiting = pingAt > this.lastMessageAt;
      if (waiting && now - pingAt > wait) {
        const quiet = ((now - this.lastMessageAt) / 1000).toFixed(0);
        this.dispatchEvent(new CustomEvent("trouble", { detail: `no message for ${quiet} s, not even the answer to a ping, while the WebSocket said open: reconnected` }));
        this._abandon(ws, 4000, "no answer to a ping");
        return;
      }
      if (!waiting && (now - pingAt >= this.heartbeatMs || now - this.lastMessageAt >= PING_QUIET_MS)) {
        this._send({ type: "ping", id: ++pingId });
        pingAt = now;
      }
    }, 1000));
  }

  // Give up on a socket now: its handlers go, onclose runs as if it had closed with
  // ``code`` (status, stats, reconnect), and the socket is closed in the background.
  _abandon(ws, code, reason) {
    if (!ws || this._ws !== ws) return;
    const onclose = ws.onclose;
    ws.onmessage = ws.onclose = ws.onopen = null;
    try { ws.close(code, reason); } catch { /* closing already */ }
    onclose?.({ code, reason });
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
    if (msg.type === "close") return this._restartSse(msg.code); // SSE: the stream ends
    const items = msg.type === "batch" ? msg.items : [msg];
    const changed = new Set();
    const gaps = {};
    for (const m of items) {
      if (m.type === "snapshot" || m.type === "delta") {
        const outcome = this.apply(m);
        if (outcome === "applied") { changed.add(m.topic); this.lastApplied = m; this.lastAppliedAt = this.lastMessageAt; }
        else if (outcome === "gap") gaps[m.topic] = this.topics.get(m.topic)?.seq ?? 0;
      } else if (m.type === "history" || m.type === "history_end") {
        this.dispatchEvent(new CustomEvent(m.type, { detail: m }));
      } else if (m.type === "action") { // to a wall (wallreport.js)
        this.dispatchEvent(new CustomEvent("action", { detail: m }));
      } else if (this._answered(m)) {
        // an ack_alarm answer: resolved its promise
      } else if (m.type === "error") {
        console.warn("gateway error", m.code, m.message);
        // a refused wall report is the reporter's business, not the wall's banner's
        const wallError = ["too_soon", "too_many_walls", "unknown_action"].includes(m.code);
        this.dispatchEvent(new CustomEvent(wallError ? "wall-error" : "gateway-error", { detail: m }));
      }
    }
    if (Object.keys(gaps).length && this.epoch) {
      if (this.sse) this._restartSse(0); // no messages upstream: a fresh stream resyncs
      else this._send({ type: "resume", epoch: this.epoch, topics: gaps });
    }
    if (changed.size) this._changed(changed);
  }

  // Acknowledge alarms (topics "$alarms/..."): resolves with the gateway's answer, the
  // `ack` ({ok: true}) or the `error` ({ok: false, code, message}), or {ok: false, code:
  // "timeout"}. The request keeps one client-chosen id and is resent with it on every
  // reconnect until answered, so a retry never acknowledges twice.
  ackAlarm(alarms, timeoutMs = 10000) {
    const id = `ack-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const msg = { type: "ack_alarm", id, alarms };
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this._acks.delete(id); resolve({ ok: false, code: "timeout" }); }, timeoutMs);
      this._acks.set(id, { msg, resolve, timer });
      this._send(msg);
    });
  }

  _answered(m) {
    const id = m.type === "ack" && m.op === "ack_alarm" ? m.id : m.type === "error" ? m.ref : null;
    const pending = id != null && this._acks.get(id);
    if (!pending) return false;
    this._acks.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(m.type === "ack" ? { ok: true, ...m } : { ok: false, code: m.code, message: m.message });
    return true;
  }

  _changed(topics) {
    this.dispatchEvent(new CustomEvent("change", { detail: { topics } }));
  }

  // The protocol's rules for one state message; returns applied|skipped|gap.
  apply(m) {
    const held = this.topics.get(m.topic);
    if (m.type === "snapshot") {
      // a resync snapshot replaces whatever is held (even a seq ahead of it)
      if (held && held.seq >= m.seq && m.resync !== true) { this.stats.skipped += 1; return "skipped"; }
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
