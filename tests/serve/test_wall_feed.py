"""The wall's connection in a worker (dashboard/js/feed.js + feedworker.js), in node.

The page's FeedClient starts the worker module; here a stand-in Worker runs that module in
the same process and carries every message both ways through structuredClone, as a
browser does, and a stand-in WebSocket plays the gateway. What is checked is what the
wall relies on: the page's copy equals the worker's after snapshots, deltas and a gap
(the resume goes out from the worker), big batches reach the page in bounded chunks,
a new epoch drops every topic, status and refusals arrive with the transport, the alarm
acknowledgement resolves with the gateway's answer, and wall reports are sent.
"""

from __future__ import annotations

import json
import pathlib

from tests.nodejs import run_module_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
FEED = json.dumps((ROOT / "dashboard/js/feed.js").as_uri())

SCRIPT = """
const sockets = [];
globalThis.WebSocket = class {
  constructor(url, protocols) { this.url = url; this.sent = []; this.readyState = 0;
                                this.bufferedAmount = 0; sockets.push(this); }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code = 1000, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  open() { this.readyState = 1; this.onopen?.(); }
  recv(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
};
// the worker's global scope, shared with this module (one worker): what it posts reaches
// the page's onmessage as a structured clone, in a later task, as in a browser
let page = null;
globalThis.self = globalThis;
globalThis.postMessage = (m) => {
  const c = structuredClone(m);
  setTimeout(() => page.onmessage({ data: c }));
};
globalThis.Worker = class {
  constructor(url, opts) {
    page = this;
    this.ready = opts.type === "module" ? import(url.href) : Promise.reject(new Error("classic"));
  }
  postMessage(m) {
    const c = structuredClone(m);
    this.ready.then(() => self.onmessage({ data: c }));
  }
  terminate() {}
};
const { FeedClient } = await import(FEED);
const tick = () => new Promise((r) => setTimeout(r, 5));
const client = new FeedClient({ url: "ws://gw/ws", filters: ["#"], rateHz: 10, transport: "ws" });
const changes = [];
const statuses = [];
client.addEventListener("change", (e) => changes.push(e.detail.topics.size));
client.addEventListener("status",
  (e) => statuses.push([e.detail.status, client.transport, client.epoch]));
client.wallName = "w1";
client.start();
while (!sockets.length) await tick();
const ws = sockets[0];
ws.open();
ws.recv({ type: "welcome", protocol: 1, epoch: "e1", heartbeat_s: 15, limits: { x: 1 } });
const snaps = [];
for (let i = 0; i < 1200; i++) {
  snaps.push({ type: "snapshot", topic: `s/d${i}`, seq: 1, fields: { v: i }, online: true,
               stale: false, ts: 1, rx: 1 });
}
ws.recv({ type: "batch", items: snaps });
ws.recv({ type: "batch", items: [
  { type: "delta", topic: "s/d1", base: 1, seq: 2, set: { v: -1, u: 3 }, ts: 2, rx: 2 },
  { type: "delta", topic: "s/d2", base: 5, seq: 6, set: { v: 9 }, ts: 2, rx: 2 },  // a gap
] });
ws.recv({ type: "batch", items: [  // two deltas of one topic, an unset, a state change
  { type: "delta", topic: "s/d3", base: 1, seq: 2, set: { v: 7 }, ts: 3, rx: 3 },
  { type: "delta", topic: "s/d3", base: 2, seq: 3, set: {}, unset: ["v"], online: false,
    stale: false, ts: 4, rx: 4 },
  { type: "delta", topic: "s/d4", base: 1, seq: 2, set: { w: 1 }, unset: ["v"], online: null,
    stale: true, ts: 4, rx: 4 },  // presence unknown (null), silent: stale
] });
await tick(); await tick();
const out = {};
out.d3 = client.topics.get("s/d3");
out.d4 = client.topics.get("s/d4");
out.chunks = changes.slice();
out.size = client.topics.size;
out.d1 = client.topics.get("s/d1");
out.d2 = client.topics.get("s/d2");
out.sent = ws.sent.map((m) => m.type);
out.resume = ws.sent.find((m) => m.type === "resume");
out.statuses = statuses.slice();
out.limits = client.limits;
out.lastApplied = client.lastApplied;
const acked = client.ackAlarm(["$alarms/a"], 1000);
await tick();
const ack = ws.sent.find((m) => m.type === "ack_alarm");
ws.recv({ type: "ack", op: "ack_alarm", id: ack.id });
out.ack = await acked;
client._send({ type: "report", wall: "w1" });
await tick();
out.report = ws.sent.at(-1);
ws.close(1012, "restart");
await tick();
out.closed = [client.status, statuses.at(-1)];
while (sockets.length < 2) await tick();
sockets[1].open();
sockets[1].recv({ type: "welcome", protocol: 1, epoch: "e2", heartbeat_s: 15, limits: {} });
await tick(); await tick();
out.afterEpoch = [client.topics.size, client.epoch, client.status];
client.stop();
console.log(JSON.stringify(out));
process.exit(0);
"""


def test_the_page_copy_follows_the_worker_in_bounded_chunks() -> None:
    out = run_module_script(SCRIPT.replace("FEED", FEED))
    # 1,200 snapshots: three messages to the page (500, 500, 200), then the deltas'
    assert out["chunks"] == [500, 500, 200, 1, 2]
    assert out["size"] == 1200
    assert out["d1"] == {
        "seq": 2, "fields": {"v": -1, "u": 3}, "online": True, "stale": False, "ts": 2, "rx": 2,
    }  # fmt: skip
    assert out["d3"] == {
        "seq": 3, "fields": {}, "online": False, "stale": False, "ts": 4, "rx": 4,
    }  # fmt: skip
    assert out["d4"] == {
        "seq": 2, "fields": {"w": 1}, "online": None, "stale": True, "ts": 4, "rx": 4,
    }  # fmt: skip
    assert out["d2"]["seq"] == 1 and out["d2"]["fields"] == {"v": 2}  # the gap: not applied
    assert out["resume"] == {"type": "resume", "epoch": "e1", "topics": {"s/d2": 1}}
    assert out["sent"][:2] == ["subscribe", "resume"]
    assert out["limits"] == {"x": 1}
    assert out["lastApplied"] == {"topic": "s/d4", "seq": 2, "rx": 4}
    assert out["ack"]["ok"] is True
    assert out["report"] == {"type": "report", "wall": "w1"}
    assert ["open", "ws", "e1"] in out["statuses"]
    assert out["closed"][0] == "closed"
    # another epoch: nothing of the old one is kept
    assert out["afterEpoch"] == [0, "e2", "open"]
