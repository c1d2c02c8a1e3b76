"""The servers a team would write instead of the gateway, run as peers by the benchmarks.

Both read the same MQTT input as the gateway (``telemetry/#`` and ``status/#`` from the
same mosquitto), speak the gateway's ``subscribe`` message and run on asyncio with the
`websockets` library, compressed as that library offers it to browsers
(permessage-deflate, its default) when ``--deflate`` is given:

  naive     every raw device message, as it arrives, to every screen whose filter
            matches (``broadcast()``)
  coalesce  the peer a user writes once the naive one fails (about 100 lines): the
            latest value per topic, one batch per filter every 100 ms, a snapshot of
            every matching topic when a screen subscribes

With ``--deadbands`` both apply the same deadband table as the gateway's benchmark
configuration (a numeric change smaller than its band, compared with the last accepted
value, is not a change), so every server gets the same data reduction.

Each appends to ``--lag-file``, once a second, a JSON line: its event-loop lag since
the last line (how late a 10 ms sleeper wakes, as the gateway's
``gateway_event_loop_lag_seconds``: ``[wall time, lag]`` pairs) and its work so far
(``[wall time, device messages handled, frames handed to sockets]``).

    python bench/peers.py coalesce --mqtt-port P [--deflate] [--deadbands] [--lag-file F]

Prints ``{"port": N}`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from websockets.asyncio.server import broadcast, serve  # noqa: E402

from gateway.core.topics import matches  # noqa: E402

#: what a wall screen does not need to see: changes smaller than these are not news
#: (field, "abs" or "rel", threshold); the gateway gets the same as [[state.deadbands]]
DEADBAND_TABLE = [
    ("temperature", "abs", 0.2),
    ("humidity", "abs", 0.5),
    ("power", "rel", 0.02),
    ("current", "rel", 0.02),
    ("vibration", "abs", 0.05),
    ("cpu", "abs", 2.0),
    ("memory", "abs", 1.0),
]


def gateway_deadbands() -> str:
    """The table as the gateway's configuration."""
    return "".join(
        f'[[state.deadbands]]\nfilter = "#"\nfield = "{f}"\n{kind} = {v}\n'
        for f, kind, v in DEADBAND_TABLE
    )


class Deadbands:
    """The gateway's rule: news only if ``|new - old| >= max(abs, rel * |old|)``, against
    the last accepted value of the field."""

    def __init__(self, on: bool) -> None:
        self.bands = {f: (v, 0.0) if k == "abs" else (0.0, v) for f, k, v in DEADBAND_TABLE}
        self.on = on
        self.accepted: dict[str, dict[str, Any]] = {}

    def news(self, topic: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields of a message that are news (all of them without deadbands)."""
        if not self.on:
            return fields
        last = self.accepted.setdefault(topic, {})
        out = {}
        for name, value in fields.items():
            old = last.get(name)
            band = self.bands.get(name)
            if (
                band is not None
                and type(value) in (int, float)
                and type(old) in (int, float)
                and abs(value - old) < max(band[0], band[1] * abs(old))
            ):
                continue
            if old is not None and old == value:
                continue
            last[name] = out[name] = value
        return out


def parse(topic: str, payload: bytes) -> tuple[str, dict[str, Any]] | None:
    """(topic as the gateway names it, fields) of an MQTT message: ``telemetry/<path>``
    carries JSON fields (``ts`` among them), ``status/<path>`` online or offline."""
    kind, _, path = topic.partition("/")
    if kind == "status":
        return path, {"online": payload == b"online"}
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(payload)
        if type(obj) is dict:
            return path, obj
    return None


class LagProbe:
    """How late a 10 ms sleeper wakes, with the wall time of each wake-up; and once a
    second the work done so far (device messages handled, frames handed to sockets).
    Appended to the file once a second, so a peer killed while swamped keeps its
    record."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.samples: list[tuple[float, float]] = []
        self.messages = self.frames = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = time.time()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            now = time.time()
            self.samples.append((now, max(0.0, loop.time() - due)))
            if now - last >= 1.0:
                last = now
                self.flush(now)

    def flush(self, now: float) -> None:
        if self.path:
            line = {"lag": self.samples, "work": [now, self.messages, self.frames]}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
        self.samples = []


class Subscriptions:
    """Screens by filter, from the gateway's ``subscribe`` message."""

    def __init__(self) -> None:
        self.by_filter: dict[str, set[Any]] = {}

    def add(self, ws: Any, message: str | bytes) -> list[str]:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            obj = orjson.loads(message)
            if obj.get("type") == "subscribe":
                for f in obj["filters"]:
                    self.by_filter.setdefault(f, set()).add(ws)
                return list(obj["filters"])
        return []

    def drop(self, ws: Any) -> None:
        for conns in self.by_filter.values():
            conns.discard(ws)


# -- naive ---------------------------------------------------------------------------


def naive(subs: Subscriptions, bands: Deadbands, probe: LagProbe) -> tuple[Any, Any]:
    async def handler(ws: Any) -> None:
        try:
            async for message in ws:
                subs.add(ws, message)
        finally:
            subs.drop(ws)

    def on_message(topic: str, payload: bytes) -> None:
        probe.messages += 1
        parsed = parse(topic, payload)
        if parsed is None:
            return
        path, fields = parsed
        if bands.on:
            news = bands.news(path, {k: v for k, v in fields.items() if k != "ts"})
            if not news:
                return
            if "ts" in fields:
                news["ts"] = fields["ts"]
            fields = news
        frame = orjson.dumps({"topic": path, "payload": fields}).decode()
        for f, conns in subs.by_filter.items():
            if conns and matches(f, path):
                broadcast(conns, frame)
                probe.frames += len(conns)

    return handler, on_message


# -- coalescing: the latest value per topic, a batch per filter every 100 ms ---------------


def coalesce(subs: Subscriptions, bands: Deadbands, probe: LagProbe) -> tuple[Any, Any, Any]:
    state: dict[str, dict[str, Any]] = {}  # topic -> latest fields (ts among them)
    pending: dict[str, dict[str, Any]] = {}  # topic -> fields changed since the last batch
    snapshots: dict[str, str] = {}  # filter -> encoded snapshot, until the next batch

    async def handler(ws: Any) -> None:
        try:
            async for message in ws:
                for f in subs.add(ws, message):
                    if f not in snapshots:
                        items = [
                            {"type": "snapshot", "topic": t, "fields": v, "ts": v.get("ts")}
                            for t, v in state.items()
                            if matches(f, t)
                        ]
                        snapshots[f] = orjson.dumps({"type": "batch", "items": items}).decode()
                    await ws.send(snapshots[f])
                    probe.frames += 1
        finally:
            subs.drop(ws)

    def on_message(topic: str, payload: bytes) -> None:
        probe.messages += 1
        parsed = parse(topic, payload)
        if parsed is None:
            return
        path, fields = parsed
        ts = fields.pop("ts", None)
        news = bands.news(path, fields)
        if not news:
            return
        if ts is not None:
            news["ts"] = ts
        state.setdefault(path, {}).update(news)
        pending.setdefault(path, {}).update(news)

    async def flush() -> None:
        while True:
            await asyncio.sleep(0.1)
            snapshots.clear()
            if not pending:
                continue
            changed = list(pending.items())
            pending.clear()
            for f, conns in subs.by_filter.items():
                if not conns:
                    continue
                items = [
                    {"type": "delta", "topic": t, "fields": v, "ts": v.get("ts")}
                    for t, v in changed
                    if matches(f, t)
                ]
                if items:
                    broadcast(conns, orjson.dumps({"type": "batch", "items": items}).decode())
                    probe.frames += len(conns)

    return handler, on_message, flush


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    subs, bands, lag = Subscriptions(), Deadbands(args.deadbands), LagProbe(args.lag_file)
    tasks = [asyncio.create_task(lag.run())]
    if args.kind == "naive":
        handler, on_message = naive(subs, bands, lag)
    else:
        handler, on_message, flush = coalesce(subs, bands, lag)
        tasks.append(asyncio.create_task(flush()))
    signal.signal(signal.SIGTERM, lambda *_: (lag.flush(time.time()), os._exit(0)))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.kind}-peer")
    client.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(on_message, m.topic, m.payload)
    client.on_connect = lambda c, *_: c.subscribe([("telemetry/#", 0), ("status/#", 0)])
    client.connect("127.0.0.1", args.mqtt_port)
    client.loop_start()
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression="deflate" if args.deflate else None,
        ping_interval=None,
        max_queue=16,
        backlog=4096,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Future()  # until SIGTERM


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("kind", choices=["naive", "coalesce"])
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--deflate", action="store_true", help="permessage-deflate, as browsers ask")
    ap.add_argument("--deadbands", action="store_true", help="the gateway's deadband table")
    ap.add_argument("--lag-file", default=None, help="append loop lag and work here, once a second")
    asyncio.run(main(ap.parse_args()))
