"""The gateway's per-frame and per-message work in-process, for A/B comparisons on a
busy machine (a profiling aid, like perf_probe.py; not a benchmark of record).

A 10,000-device fleet (devices_sim, 1 report a second) goes through the real
MqttIngest.handle into the store (chart history on, as in `gateway run`), and 1,000
screens (half on `#`, half on one site, 10 Hz, compression on) are real WsSession
objects pumped by the real hub and FanOut.framed, writing to a null socket. Each
figure is the best of many repeats (the least disturbed by the rest of the machine):

  ingest      MqttIngest.handle per message (one second of the fleet per repeat)
  group_tick  one `#` group tick of 1,000 changed topics, per topic (fragments
              encoded, batched; the encode-once cache emptied before each repeat)
  routing     a changed topic to the groups that carry it, per topic
  pump        WsSession.pump per frame handed to a screen in sync, with the CPU
              caches flushed before each pass (thousands of screens do not fit them)

The socket write itself (about 7-10 us a frame on loopback TCP, most of a frame's
cost) is not in `pump`: perf_probe.py measures it with the rest.

    python bench/frame_bench.py [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import sys
import time
from typing import Any

import orjson
import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devices_sim.fleet import Fleet, FleetConfig, Message  # noqa: E402
from gateway import app  # noqa: E402
from gateway.config import Config, MqttConfig  # noqa: E402
from gateway.core.hub import _Slice  # noqa: E402
from gateway.core.protocol import Subscribe  # noqa: E402
from gateway.ingest.mqtt import MqttIngest  # noqa: E402
from gateway.serve import lifecycle  # noqa: E402
from gateway.serve.deflate import BoundedDeflate  # noqa: E402
from gateway.serve.sockio import Outbound  # noqa: E402
from gateway.serve.ws import WsSession  # noqa: E402

DEVICES = 10_000
SCREENS = 1_000
STEP_S = 0.05  # one hub tick at the default 20 Hz


class WallClock:
    t = 1_764_000_000.0

    def wall(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.t


class NullSocket:
    """Takes every byte at once: the pump's own work, without the kernel's."""

    def send(self, data: bytes) -> int:
        return len(data)

    def sendmsg(self, chunks: list[bytes]) -> int:
        return sum(map(len, chunks))


def payloads(msgs: list[Message]) -> list[tuple[str, bytes]]:
    out = []
    for m in msgs:
        if m.kind == "data":
            out.append((f"telemetry/{m.path}", orjson.dumps({**(m.fields or {}), "ts": m.ts})))
        else:
            out.append((f"status/{m.path}", b"online" if m.online else b"offline"))
    return out


def best(repeats: int, fn: Any) -> float:
    return min(fn() for _ in range(repeats))


async def measure(repeats: int) -> dict[str, float]:
    gw = app.build(Config(), epoch="bench")
    store, hub, ctx = gw.store, gw.hub, gw.server.session_ctx
    clock = WallClock()
    ingest = MqttIngest(MqttConfig(url="mqtt://127.0.0.1:1883"), store, clock, 1024)  # type: ignore[arg-type]
    fleet = Fleet(
        FleetConfig(devices=DEVICES, sites=20, lines=5, rate_hz=1.0, seed=1), start_wall=clock.t
    )
    first = payloads(fleet.initial())
    for topic, payload in first:
        ingest.handle(topic, payload)
    t = 0.0
    ticks = []
    for _ in range(60):
        t += STEP_S
        ticks.append(payloads(fleet.step(t)))
    site = sorted({topic.split("/")[1] for topic, _ in first})[0]
    sessions = {}
    for i in range(SCREENS):
        ext = BoundedDeflate(65536)
        ext.accept("permessage-deflate; server_no_context_takeover")
        out = Outbound(NullSocket(), ctx.stats)  # type: ignore[arg-type]
        session = WsSession(ctx, None, out, "127.0.0.1", None, b"", ext)  # type: ignore[arg-type]
        session.life.state = lifecycle.OPEN
        session.sub = hub.connect()
        filters = ("#",) if i % 2 == 0 else (f"{site}/#",)
        hub.subscribe(session.sub, Subscribe("s", filters, 10.0))
        sessions[session.sub.id] = session
        session.pump(0.0)
    now = 0.0
    woken: list[Any] = []
    for tick in ticks:
        clock.t += STEP_S
        now += STEP_S
        ingest._now = clock.t
        for topic, payload in tick:
            ingest.handle(topic, payload)
        woken = hub.tick(now) or woken
        for sub in woken:
            sessions[sub.id].pump(now)
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return run(repeats, store, hub, ingest, clock, fleet, t, woken, sessions)
    finally:
        gc.enable()


def run(
    repeats: int,
    store: Any,
    hub: Any,
    ingest: MqttIngest,
    clock: WallClock,
    fleet: Fleet,
    t: float,
    woken: list[Any],
    sessions: dict[int, WsSession],
) -> dict[str, float]:
    seconds = []
    for _ in range(repeats // 10 + 3):
        batch = []
        for _ in range(20):
            t += STEP_S
            batch += payloads(fleet.step(t))
        seconds.append(batch)

    def ingest_once() -> float:
        batch = seconds.pop(0) if len(seconds) > 1 else seconds[0]
        clock.t += 1.0
        ingest._now = clock.t
        start = time.perf_counter()
        for topic, payload in batch:
            ingest.handle(topic, payload)
        return (time.perf_counter() - start) / len(batch)

    results = {"ingest_us_per_message": best(repeats // 10 + 1, ingest_once)}
    changed = store.drain_changed()[:1000]  # a 100 ms tick of the fleet
    group = next(g for g in hub._groups.values() if g.key.filter == "#")
    sent = dict(group.sent)

    def group_tick() -> float:
        group.sent = dict(sent)
        group.pending = dict.fromkeys(changed)
        hub._cache, hub._cache_old, hub._cache_bytes = {}, {}, 0
        group.join = None
        start = time.perf_counter()
        for _ in hub._tick_group(group, 1.0, _Slice(hub.config.slice_items)):
            pass
        return (time.perf_counter() - start) / len(changed)

    results["group_tick_us_per_topic"] = best(repeats, group_tick)
    topics = list(store.topics())

    def routing() -> float:
        match = hub._index.match
        start = time.perf_counter()
        for topic in topics:
            for g in match(topic):
                if g.key.grants is None or g.allows(topic):
                    pass
        return (time.perf_counter() - start) / len(topics)

    results["routing_us_per_topic"] = best(repeats, routing)
    screens = [sessions[s.id] for s in woken]
    flush = bytearray(48 << 20)

    def pump() -> float:
        for session in screens:
            for s in session.sub.subs.values():  # one tick behind again
                for m in s.members:
                    m.cursor = m.group.tick_no - 1
            session.sub.ready = True
        flush[::64] = bytes(len(flush) // 64)  # the caches hold none of it
        start = time.perf_counter()
        for session in screens:
            session.pump(1.0)
        return (time.perf_counter() - start) / len(screens)

    results["pump_us_per_frame"] = best(max(10, repeats // 5), pump)
    return {k: round(v * 1e6, 3) for k, v in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    print(json.dumps(trio.run(measure, args.repeats)))


if __name__ == "__main__":
    main()
