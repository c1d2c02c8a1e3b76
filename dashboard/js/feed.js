// FeedClient: the page's side of the connection that runs in a worker (feedworker.js).
//
// It looks like a GatewayClient (client.js) to the rest of the wall: `topics` (a Map
// topic -> {seq, fields, online, stale, ts, rx}), `status`, `transport`, `sse`, `epoch`,
// `meta`, `limits`, `token`, `stats`, `lastMessageAt`, `lastApplied(At)`, `heartbeatMs`,
// `wallName`, the same events (change, status, trouble, action, history, history_end,
// gateway-error, wall-error), `ackAlarm()`, `_send()` (wall reports), `start()`, `stop()`.
// The worker parses and applies the gateway's messages; the page only stores the changed
// topics' states it posts, or applies the one delta it forwards as a patch (in chunks of
// a few hundred, one task each), and dispatches `change` for them, so receiving never
// makes a long task here.
//
// Rules:
// * `wallName` must be set before start() (the event stream's URL names the wall).
// * The properties are the worker's as of its last message (at most a second old).
// * Without module workers (or with ?worker=0, to measure the difference, or when the
//   worker fails before its first message), the same object runs a GatewayClient in the
//   page: nothing else of the wall changes.

import { GatewayClient } from "./client.js";
import { takeFragmentToken } from "./token.js";

const EVENTS = ["status", "trouble", "action", "history", "history_end", "gateway-error",
                "wall-error"];

export class FeedClient extends EventTarget {
  constructor(options = {}, { worker = true } = {}) {
    super();
    // the fragment token is the page's: taken (and removed from the address bar) here
    this.options = { ...options, token: options.token ?? takeFragmentToken() };
    this.token = this.options.token;
    this.topics = new Map();
    this.wallName = null;
    this.mode = worker && typeof Worker !== "undefined" ? "worker" : "page";
    this._p = { status: "idle", transport: options.transport === "sse" ? "sse" : "ws",
                epoch: null, meta: null, limits: {}, heartbeatMs: 15000, attempt: 0,
                lastMessageAt: 0, lastAppliedAt: 0, lastApplied: null, bufferedAmount: 0,
                stats: { connects: 0, resumes: 0, gaps: 0, applied: 0, skipped: 0, closes: [] } };
    this._acks = new Map(); // id -> resolve
    this._worker = null;
    this._local = null;
    this._heard = false; // the worker posted at least once
  }

  get status() { return this._p.status; }
  get transport() { return this._p.transport; }
  get sse() { return this._p.transport === "sse"; }
  get epoch() { return this._p.epoch; }
  get meta() { return this._p.meta; }
  get limits() { return this._p.limits; }
  get heartbeatMs() { return this._p.heartbeatMs; }
  get attempt() { return this._p.attempt; }
  get stats() { return this._p.stats; }
  get lastMessageAt() { return this._p.lastMessageAt; }
  get lastAppliedAt() { return this._p.lastAppliedAt; }
  get lastApplied() { return this._p.lastApplied; }
  // what wallreport.js reads before a reload: the bytes the socket has yet to send
  get _ws() {
    if (this._local) return this._local._ws;
    return this.status === "open" && !this.sse ? { bufferedAmount: this._p.bufferedAmount } : null;
  }

  start() {
    if (this.mode === "page") return this._startLocal();
    try {
      this._worker = new Worker(new URL("./feedworker.js", import.meta.url), { type: "module" });
    } catch (err) {
      console.warn("no worker for the connection, running it in the page:", err);
      return this._startLocal();
    }
    this._worker.onmessage = (e) => this._onWorker(e.data);
    this._worker.onerror = (e) => {
      console.warn("the connection's worker failed:", e.message);
      if (!this._heard) { this._worker.terminate(); this._worker = null; this._startLocal(); }
    };
    this._worker.postMessage({ op: "start", options: this.options, wallName: this.wallName });
  }

  stop() {
    if (this._local) this._local.stop();
    this._worker?.postMessage({ op: "stop" });
  }

  _send(msg) {
    if (this._local) this._local._send(msg);
    else this._worker?.postMessage({ op: "send", msg });
  }

  // Resolves with the gateway's answer (client.js ackAlarm), whichever side runs it.
  ackAlarm(alarms, timeoutMs = 10000) {
    if (this._local) return this._local.ackAlarm(alarms, timeoutMs);
    const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    return new Promise((resolve) => {
      this._acks.set(id, resolve);
      this._worker.postMessage({ op: "ack", id, alarms, timeoutMs });
    });
  }

  _onWorker(m) {
    this._heard = true;
    if (m.props) this._p = m.props;
    if (m.op === "state") {
      const changed = new Set();
      for (const u of m.upd) {
        const topic = u[0];
        changed.add(topic);
        if (u.length === 2) { // the whole state, or gone
          if (u[1]) this.topics.set(topic, u[1]); else this.topics.delete(topic);
          continue;
        }
        const held = this.topics.get(topic); // a patch: one delta (feedworker.js)
        if (!held) continue; // cannot happen: the worker posts a topic whole first
        const [, seq, ts, rx, set, unset, presence, online, stale] = u;
        Object.assign(held.fields, set);
        if (unset) for (const name of unset) delete held.fields[name];
        if (presence) { held.online = online; held.stale = stale; }
        held.seq = seq;
        held.ts = ts;
        held.rx = rx;
      }
      this.dispatchEvent(new CustomEvent("change", { detail: { topics: changed } }));
    } else if (m.op === "event") {
      this.dispatchEvent(new CustomEvent(m.type, { detail: m.detail }));
    } else if (m.op === "acked") {
      const resolve = this._acks.get(m.id);
      this._acks.delete(m.id);
      resolve?.(m.result);
    }
  }

  // The same client in the page: its copy, properties and events are this object's.
  _startLocal() {
    this.mode = "page";
    const c = new GatewayClient(this.options);
    this._local = c;
    this._p = c;
    this.topics = c.topics;
    if (this.wallName) c.wallName = this.wallName;
    for (const type of ["change", ...EVENTS]) {
      c.addEventListener(type, (e) => this.dispatchEvent(new CustomEvent(type, { detail: e.detail })));
    }
    c.start();
  }
}
