// The wall's connection, in a dedicated worker (an ES module worker, started by feed.js).
//
// Why: with 5,000 devices at 10 Hz the page receives 15,000-22,000 topic updates a second
// in 10 batches; parsing one batch and applying it by the protocol's rules took 10-80 ms
// on the main thread, and those tasks were the long frames of the wall (the Long
// Animation Frames API named `DOMWebSocket.onmessage` first, docs/benchmarks.md). Here
// they cost the page nothing: this worker owns the GatewayClient (client.js, unchanged:
// WebSocket and its SSE fallback and return, resume by epoch and seq, reconnect with
// backoff, heartbeats, acknowledgements), and posts the page only the result.
//
// To the page (feed.js), in order:
//   {op: "state", upd: [...], props}: the changed topics, at most CHUNK per message, so
//     that no single task on the page is long (the browser can paint between two
//     messages); each entry is [topic, state] (the whole current state: new, resynced,
//     or more than one change since the last post), [topic, null] (gone), or the one
//     delta applied since the last post as a patch [topic, seq, ts, rx, set, unset,
//     presence, online, stale] (unset null when the delta had none; presence false when
//     it had no online/stale, which may be null: unknown presence): about half the
//     bytes to copy and objects to build on the page for the common case;
//   {op: "event", type, detail, props}: status, trouble, action, history, history_end,
//     gateway-error, wall-error, as the client dispatched them;
//   {op: "props", props}: once a second, so the page's lastMessageAt, stats and
//     bufferedAmount stay current while nothing changes (an SSE heartbeat check reads them);
//   {op: "acked", id, result}: the answer to an "ack".
// From the page: {op: "start", options, wallName}, {op: "send", msg}, {op: "ack", id,
// alarms, timeoutMs}, {op: "stop"}.
// Invariant: state messages carry copies (structured clone) taken when posted, in the
// order the client applied them, so the page's copy converges to this one; a patch is
// only sent for a topic whose whole state the page already got (a topic's first apply is
// a snapshot, which is posted whole).

import { GatewayClient } from "./client.js";

const CHUNK = 500; // topics per state message: about 1-2 ms of the page's work each
const EVENTS = ["status", "trouble", "action", "history", "history_end", "gateway-error",
                "wall-error"];
const PROPS_MS = 1000;

let client = null;
const WHOLE = 1;
const pending = new Map(); // topic -> the one delta applied since the last post, or WHOLE

// The client, noting what each applied message changed (client.js's rules unchanged).
class NotingClient extends GatewayClient {
  apply(m) {
    const outcome = super.apply(m);
    if (outcome === "applied") {
      pending.set(m.topic, m.type === "delta" && !pending.has(m.topic) ? m : WHOLE);
    }
    return outcome;
  }
}

function props() {
  const c = client;
  const a = c.lastApplied;
  return { status: c.status, transport: c.transport, epoch: c.epoch, meta: c.meta,
           limits: c.limits, heartbeatMs: c.heartbeatMs, attempt: c.attempt,
           lastMessageAt: c.lastMessageAt, lastAppliedAt: c.lastAppliedAt,
           lastApplied: a ? { topic: a.topic, seq: a.seq, rx: a.rx } : null,
           stats: c.stats, bufferedAmount: c._ws ? c._ws.bufferedAmount : 0 };
}

function entry(topic) {
  const st = client.topics.get(topic);
  const d = pending.get(topic);
  if (!st || !d || d === WHOLE) return [topic, st ?? null];
  const presence = "online" in d;
  return [topic, d.seq, d.ts, d.rx, d.set || {}, d.unset?.length ? d.unset : null,
          presence, presence ? d.online : null, presence ? d.stale : null];
}

function postChanged(topics) {
  let upd = [];
  for (const topic of topics) {
    upd.push(entry(topic));
    if (upd.length >= CHUNK) {
      postMessage({ op: "state", upd, props: props() });
      upd = [];
    }
  }
  if (upd.length) postMessage({ op: "state", upd, props: props() });
  pending.clear();
}

function start({ options, wallName }) {
  client = new NotingClient(options);
  if (wallName) client.wallName = wallName;
  client.addEventListener("change", (e) => postChanged(e.detail.topics));
  for (const type of EVENTS) {
    client.addEventListener(type, (e) => postMessage({ op: "event", type, detail: e.detail,
                                                       props: props() }));
  }
  setInterval(() => postMessage({ op: "props", props: props() }), PROPS_MS);
  client.start();
}

self.onmessage = (e) => {
  const m = e.data;
  if (m.op === "start" && !client) start(m);
  else if (!client) return;
  else if (m.op === "send") client._send(m.msg);
  else if (m.op === "ack") {
    client.ackAlarm(m.alarms, m.timeoutMs).then((result) => postMessage({ op: "acked", id: m.id, result }));
  } else if (m.op === "stop") client.stop();
};
