"""Wall metrics: walls by state with every state exported from the start, reports and
refusals counted, and per-wall series only when the operator asks, capped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from gateway.app import Gateway
from tests.gw import url
from tests.serve.httpget import http_get


async def samples(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = await http_get(gw.admin_port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_walls_by_state_and_reports_and_the_capped_per_wall_series(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(walls={"metrics_per_wall": 2})
    before = await samples(gw)
    for state in ("gone", "stale", "lagging", "hidden", "healthy"):
        assert before[("gateway_walls", (("state", state),))] == 0
    assert not [k for k in before if k[0] == "gateway_wall_behind_seconds"]
    async with trio.open_nursery() as nursery:
        opened = []
        for n, visible in enumerate([True, True, False]):
            ws = await nursery.start(_wall, gw, f"w{n}", visible)
            opened.append(ws)
        with trio.fail_after(5):
            while (await samples(gw)).get(("gateway_wall_reports_total", ())) != 3:
                await trio.sleep(0.01)
        await opened[0].send_message(orjson.dumps({"type": "report", "wall": "w0"}).decode())
        await opened[0].get_message()  # the too_soon error
        got = await samples(gw)
        assert got[("gateway_walls", (("state", "healthy"),))] == 2
        assert got[("gateway_walls", (("state", "hidden"),))] == 1
        assert got[("gateway_wall_reports_refused_total", (("reason", "too_soon"),))] == 1
        assert got[("gateway_client_message_rejections_total", (("reason", "too_soon"),))] == 1
        per_wall = [k for k in got if k[0] == "gateway_wall_behind_seconds"]
        assert len(per_wall) == 2  # capped at metrics_per_wall
        nursery.cancel_scope.cancel()


async def _wall(gw: Gateway, name: str, visible: bool, task_status: trio.TaskStatus[Any]) -> None:
    async with open_websocket_url(url(gw)) as ws:
        await ws.get_message()  # welcome
        report = {"type": "report", "wall": name, "visible": visible}
        await ws.send_message(orjson.dumps(report).decode())
        task_status.started(ws)
        await trio.sleep_forever()
