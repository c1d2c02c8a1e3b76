"""An MQTT flood must not freeze the gateway: the reader yields after a bounded amount
of work per wake-up, so ticks, accepts, heartbeats and /healthz go on while it drains.

The flood: 4 ``mosquitto_pub -l`` processes (C, far faster than any Python consumer)
publish 15,000 messages each as fast as they can; the gateway reads without a pause
for seconds. Before the bound, one wake-up read the whole flood (a 4 s flood stalled
the loop for 8.8 s)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from gateway.client import GatewayClient
from tests.broker import Mosquitto
from tests.gw import url
from tests.ingest.test_mqtt import mqtt_gateway
from tests.serve.httpget import http_get

PUBLISHERS = 4
PER_PUBLISHER = 15_000
#: generous: the budget is a 100 ms max, but the gateway shares this process with the
#: test's screens and this machine with others (at a load of 9 on 2 cores the maxima
#: reached 0.6 s); the stalls this catches took seconds (13.5 s before the fix)
LAG_MAX_S = 1.0


async def test_a_flood_of_messages_never_stalls_the_loop_and_loses_nothing(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto)
    assert gw.mqtt is not None
    screen = GatewayClient(url(gw), ["flood/#"], rate_hz=10)
    lines = tmp_path / "lines"
    lines.write_bytes(b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(PER_PUBLISHER)))
    health: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(screen.run)
        with gw.looplag.window() as lag:
            procs = []
            for p in range(PUBLISHERS):
                args = [mosquitto.pub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "0"]
                args += ["-l", "-t", f"telemetry/flood/{p}"]
                with lines.open("rb") as stdin:
                    proc = await trio.lowlevel.open_process(
                        args, stdin=stdin, stdout=subprocess.DEVNULL
                    )
                procs.append(proc)

            async def probe_health() -> None:  # /healthz keeps answering throughout
                while True:
                    began = trio.current_time()
                    assert (await http_get(gw.port, "/healthz"))[0] == 200
                    health.append(trio.current_time() - began)
                    await trio.sleep(0.05)

            nursery.start_soon(probe_health)
            with trio.fail_after(60):
                for proc in procs:
                    await proc.wait()
                # every publisher's last message arrives: nothing was lost to the flood
                last = {"n": PER_PUBLISHER - 1}
                await screen.wait_until(
                    lambda m: all(
                        f"flood/{p}" in m.topics and m.topics[f"flood/{p}"].fields == last
                        for p in range(PUBLISHERS)
                    )
                )
        nursery.cancel_scope.cancel()
    received = gw.mqtt.stats.messages["mqtt"]
    print(f"\nflood: {received} messages, loop lag {lag.summary()}, /healthz max {max(health)} s")
    assert received == PUBLISHERS * PER_PUBLISHER
    assert lag.max < LAG_MAX_S, lag.summary()
    assert max(health) < LAG_MAX_S
    assert screen.connects == 1
