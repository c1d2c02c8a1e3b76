"""Several gateways behind a real nginx (deploy/nginx.conf.template), mosquitto as the
backplane, a simulated fleet publishing into it."""

from __future__ import annotations

import string
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from gateway.app import Gateway
from gateway.client import GatewayClient
from tests.broker import Mosquitto, free_port
from tests.conftest import require_binary, stop_process
from tests.gw import start_gateway
from tests.serve.httpget import http_get
from tests.serve.test_sse import EventStream

ROOT = Path(__file__).resolve().parents[2]
SITES_A = ("berlin", "paris")  # the sites deploy/nginx.conf.template routes to SHARD_A


async def start_nginx(tmp: Path, **ports: str) -> tuple[trio.Process, int]:
    binary = require_binary("nginx")
    listen = free_port()
    run = tmp / "nginx"
    run.mkdir()
    run.chmod(0o777)  # the workers may run as another user
    template = string.Template((ROOT / "deploy" / "nginx.conf.template").read_text())
    conf = run / "nginx.conf"
    conf.write_text(
        template.safe_substitute(LISTEN=f"127.0.0.1:{listen}", RUN_DIR=str(run), **ports)
    )
    proc = await trio.lowlevel.open_process(
        [binary, "-c", str(conf), "-p", str(run), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
    )
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", listen)
            except OSError:
                if proc.returncode is not None:
                    raise RuntimeError((run / "error.log").read_text()) from None
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return proc, listen


@pytest.fixture
async def fleet(mosquitto: Mosquitto) -> AsyncIterator[trio.Process]:
    """40 devices over 4 sites at 2 messages/s each, for at most 60 s."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "devices_sim", "--mqtt", mosquitto.url, "--devices", "40",
         "--rate", "2", "--duration", "60", "--quiet", "--connections", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield proc
    finally:
        await stop_process(proc)


def held(c: GatewayClient) -> dict[str, Any]:
    return {t: m.fields for t, m in c.mirror.topics.items()}


def state(gw: Gateway, prefix: str = "") -> dict[str, Any]:
    return {s.topic: s.fields for s in gw.store.states() if s.seq and s.topic.startswith(prefix)}


async def settle(pairs: list[tuple[GatewayClient, Gateway]], prefix: str = "") -> None:
    """Until every client holds exactly its gateway's state (the fleet keeps going)."""
    while not all(
        c.mirror.epoch == gw.store.epoch and state(gw, prefix) and held(c) == state(gw, prefix)
        for c, gw in pairs
    ):
        await trio.sleep(0.02)


async def test_two_gateways_behind_nginx_and_one_dies(
    tmp_path: Path, mosquitto: Mosquitto, fleet: trio.Process, nursery: trio.Nursery
) -> None:
    mqtt = {"url": mosquitto.url, "reconnect_min_s": 0.1}
    doomed_scope = trio.CancelScope()
    gws: list[Gateway] = []

    async def doomed(task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        with doomed_scope:  # cancelled: like a kill, no close frames
            async with trio.open_nursery() as inner:
                task_status.started(await start_gateway(inner, mqtt=mqtt))
                await trio.sleep_forever()

    gws.append(await nursery.start(doomed))
    gws.append(await start_gateway(nursery, mqtt=mqtt))
    ports = {"GATEWAY_1": f"127.0.0.1:{gws[0].port}", "GATEWAY_2": f"127.0.0.1:{gws[1].port}",
             "SHARD_A": "127.0.0.1:9", "SHARD_B": "127.0.0.1:9"}  # fmt: skip
    proc, port = await start_nginx(tmp_path, **ports)
    try:
        clients = [
            GatewayClient(f"ws://127.0.0.1:{port}/ws", ["#"], backoff_base_s=0.2, backoff_cap_s=1)
            for _ in range(6)
        ]
        for c in clients:
            await nursery.start(c.run)
        by_epoch = {gw.store.epoch: gw for gw in gws}
        with trio.fail_after(10):
            while len(gws[0].store) < 40 or len(gws[1].store) < 40:
                await trio.sleep(0.05)
        # least_conn spreads the screens over both gateways; each sees its gateway's state
        assert {c.mirror.epoch for c in clients} == set(by_epoch)
        with trio.fail_after(10):
            await settle([(c, by_epoch[c.mirror.epoch]) for c in clients])  # type: ignore[index]
        # the two gateways hold the same topics, fed by the same broker
        assert set(state(gws[0])) == set(state(gws[1]))
        # the dashboard, the API and the event stream pass through nginx too
        status, _, body = await http_get(port, "/")
        assert status == 200 and b"<html" in body.lower()
        status, _, body = await http_get(port, "/api/topics?filter=%23")
        assert status == 200 and len(orjson.loads(body)["topics"]) == 40
        sse = await EventStream.open(port, "filter=berlin/%23")
        assert sse.status == 200
        assert (await sse.event())["type"] == "welcome"  # type: ignore[index]
        assert (await sse.event())["type"] == "ack"  # type: ignore[index]
        with trio.fail_after(5):
            first = await sse.event()
        assert first is not None and first["type"] in ("snapshot", "batch")
        sse.close()
        on_doomed = [c for c in clients if c.mirror.epoch == gws[0].store.epoch]
        assert on_doomed
        doomed_scope.cancel()
        killed = trio.current_time()
        with trio.fail_after(5):  # through nginx, to the survivor, holding its state
            await settle([(c, gws[1]) for c in clients])
        assert all(c.mirror.epoch == gws[1].store.epoch for c in on_doomed)
        assert trio.current_time() - killed < 5
        for c in clients:
            c.stop()
    finally:
        await stop_process(proc)
        gws[1].server.request_shutdown()


async def test_a_sharded_pair_each_holds_its_part_and_screens_see_their_site_complete(
    tmp_path: Path, mosquitto: Mosquitto, fleet: trio.Process, nursery: trio.Nursery
) -> None:
    def part(sites: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {"filter": f"{kind}/{s}/#", "qos": 0} for s in sites for kind in ("telemetry", "status")
        ]

    a = await start_gateway(nursery, mqtt={"url": mosquitto.url, "subscriptions": part(SITES_A)})
    b = await start_gateway(
        nursery, mqtt={"url": mosquitto.url, "subscriptions": part(("madrid", "rome"))}
    )
    ports = {"GATEWAY_1": "127.0.0.1:9", "GATEWAY_2": "127.0.0.1:9",
             "SHARD_A": f"127.0.0.1:{a.port}", "SHARD_B": f"127.0.0.1:{b.port}"}  # fmt: skip
    proc, port = await start_nginx(tmp_path, **ports)
    try:
        with trio.fail_after(10):
            while len(a.store) < 20 or len(b.store) < 20:
                await trio.sleep(0.05)
        assert {t.split("/")[0] for t in state(a)} == set(SITES_A)  # only its part
        assert {t.split("/")[0] for t in state(b)} == {"madrid", "rome"}
        screens = {
            site: GatewayClient(f"ws://127.0.0.1:{port}/shard/ws?site={site}", [f"{site}/#"])
            for site in ("berlin", "paris", "madrid", "rome")
        }
        for c in screens.values():
            await nursery.start(c.run)
        pairs = [(c, a if site in SITES_A else b) for site, c in screens.items()]
        for (c, gw), site in zip(pairs, screens, strict=True):
            with trio.fail_after(10):
                await settle([(c, gw)], f"{site}/")
            assert len(held(c)) == 10  # the site complete: its 10 devices
            c.stop()
    finally:
        await stop_process(proc)
        a.server.request_shutdown()
        b.server.request_shutdown()
