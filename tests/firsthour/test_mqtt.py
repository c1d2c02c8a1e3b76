"""The first hour with a broker: README.md's "Your own devices" commands, typed as
written, against a real mosquitto: a user's own device with mosquitto_pub on the
documented topic layout, devices elsewhere with --mqtt-topic, and devices-sim.
"""

from __future__ import annotations

import re
import signal

import orjson
import trio

from tests.broker import Mosquitto
from tests.conftest import require_binary, stop_process
from tests.firsthour.docs import TAIL_LINE, Reader, blocks, commands, on_ports, run, section, start
from tests.firsthour.test_readme import MQTT_COMMANDS, USING
from tests.serve.httpget import http_get

OWN = "### Your own devices, through an MQTT broker"


def documented() -> list[tuple[str, str]]:
    out = [(c.text, c.comment) for b in blocks("README.md", OWN) for c in commands(b)]
    assert [text for text, _ in out] == MQTT_COMMANDS
    return out


async def start_gateway(cmd: str, broker: int) -> tuple[trio.Process, Reader, int]:
    proc = await start(on_ports(cmd, broker=broker))
    assert proc.stderr is not None
    log = Reader(proc.stderr)
    m = await log.until(rb"listening on http://127\.0\.0\.1:(\d+)/")
    # a message published before the broker acknowledged the subscriptions never
    # reaches the gateway (a loaded machine showed it once: the device was never seen)
    await log.until(rb"MQTT: subscriptions acknowledged by the broker")
    return proc, log, int(m.group(1))


async def topics(port: int, flt: str = "#") -> dict[str, dict[str, object]]:
    _, _, body = await http_get(port, f"/api/topics?filter={flt.replace('#', '%23')}")
    found: dict[str, dict[str, object]] = orjson.loads(body)["topics"]
    return found


async def wait_for(port: int, predicate, within: float = 40) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    with trio.fail_after(within):
        while not predicate(found := await topics(port)):
            await trio.sleep(0.05)
    return found


def tail_line_says(comment: str, line: str) -> None:
    """A README comment like `plant1/press-7 #2 temperature=21.5 rpm=1180` is what the
    tail line shows after its time stamp."""
    assert re.match(TAIL_LINE, line), line
    assert line.split(" ", 1)[1] == comment, (line, comment)


async def test_own_devices_and_a_fleet_through_mosquitto(mosquitto: Mosquitto) -> None:
    require_binary("mosquitto_pub", "mosquitto-clients")
    cmds = documented()
    broker = mosquitto.port

    # 1. the default layout: telemetry/<device> and status/<device>
    gw, log, port = await start_gateway(cmds[0][0], broker)
    try:
        # the start log says what it subscribes to and how topics map (docs/operations.md)
        mapping = re.findall(
            r"^(INFO gateway: MQTT.*)$", section("docs/operations.md", "### `[mqtt]`"), re.M
        )
        assert len(mapping) == 4
        for line in mapping:
            assert line.replace("INFO ", " INFO ", 1) in log.text, line
        for cmd, _ in cmds[1:3]:
            done = await run(on_ports(cmd, broker=broker))
            assert done.returncode == 0, done.stderr
        await wait_for(port, lambda t: t.get("plant1/press-7", {}).get("seq") == 2)
        cmd, comment = cmds[3]
        done = await run(on_ports(cmd, gateway=port))
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.decode().splitlines()
        tail_line_says(comment, line)

        # a field holding an object is stored, and the log says what that means
        done = await run(
            on_ports(
                'mosquitto_pub -t telemetry/plant1/press-8 -m \'{"pos": {"x": 1}}\'',
                broker=broker,
            )
        )
        assert done.returncode == 0
        await log.until(rb"'telemetry/plant1/press-8': a field holds a JSON object or array")

        # a message on a subscribed topic that no route maps: counted and logged
        done = await run(on_ports("mosquitto_pub -t telemetry -m '{\"a\": 1}'", broker=broker))
        assert done.returncode == 0
        await log.until(rb"MQTT message on 'telemetry' refused: no route maps this MQTT topic")
        admin = int((await log.until(rb"admin on http://127\.0\.0\.1:(\d+)/metrics"))[1])
        _, _, metrics = await http_get(admin, "/metrics")
        assert b'gateway_ingest_rejections_total{reason="unmapped"} 1.0' in metrics

        # 3. a simulated fleet through the same broker, seen by this gateway
        cmd, comment = cmds[7]
        sim = await start(on_ports(cmd, broker=broker))
        try:
            assert sim.stderr is not None
            out = Reader(sim.stderr)
            m = await out.until(rb"^connections (\d+)/(\d+)  devices online (\d+)/(\d+) ")
            assert comment.startswith("connections 4/4  devices online 1000/1000")
            seen = await wait_for(port, lambda t: len(t) == 1000 + 2, within=60)
            await out.until(rb"^connections 4/4  devices online 1000/1000 ")
            sites = {t.split("/")[0] for t in seen}
            assert sites == {"berlin", "paris", "madrid", "rome", "plant1"}  # no phantom "sim"
            sim.send_signal(signal.SIGINT)  # Ctrl-C: every device says offline, a summary
            with trio.fail_after(20):
                assert await sim.wait() == 0
            await out.until(rb"summary: [\d,]+ messages .* 0 failed connection attempts")
            gone = await wait_for(
                port, lambda t: sum(v["online"] is False for v in t.values()) == 1000
            )
            assert len(gone) == 1002 and m is not None
        finally:
            await stop_process(sim)
    finally:
        await stop_process(gw)
    assert gw.returncode == 0

    # 2. devices that publish under plant/: --mqtt-topic
    gw, log, port = await start_gateway(cmds[4][0], broker)
    try:
        for line in re.findall(r"^(INFO gateway: MQTT.*)$", section("README.md", USING), re.M):
            assert line.replace("INFO ", " INFO ", 1) in log.text, line
        done = await run(on_ports(cmds[5][0], broker=broker))
        assert done.returncode == 0, done.stderr
        await wait_for(port, lambda t: "plant/line1/press-7" in t)
        cmd, comment = cmds[6]
        done = await run(on_ports(cmd, gateway=port))
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.decode().splitlines()
        tail_line_says(comment, line)
        # the default routes are replaced: the fleet's retained statuses are not read
        assert set(await topics(port)) == {"plant/line1/press-7"}
    finally:
        await stop_process(gw)
    assert gw.returncode == 0
