"""A real Prometheus scrapes a running gateway; the dashboard and alerts find data."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import yaml  # type: ignore[import-untyped]

from gateway.app import Gateway
from gateway.client import GatewayClient
from tests.broker import Mosquitto, free_port
from tests.conftest import require_binary, stop_process
from tests.gw import url
from tests.serve.httpget import http_get

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"


def dashboard_exprs(job: str | None = None, instance: str | None = None) -> list[str]:
    """The panels' queries; with ``job``/``instance``, the template variables filled in
    as Grafana does (a regex match: ``$instance`` "All" is ``.*``)."""
    doc = json.loads((GRAFANA / "dashboards" / "gateway.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    if job is not None and instance is not None:
        exprs = [e.replace("$job", job).replace("$instance", instance) for e in exprs]
    return exprs


def test_every_panel_query_is_scoped_by_the_job_and_instance_variables() -> None:
    doc = json.loads((GRAFANA / "dashboards" / "gateway.json").read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert set(variables) == {"job", "instance"}
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    assert "$job" in variables["instance"]["query"]["query"]
    for expr in dashboard_exprs():
        selectors = re.findall(r"\b(?:gateway|process)_[a-z_]+(\{[^}]*\})?", expr)
        assert selectors, expr
        for sel in selectors:
            assert 'job=~"$job"' in sel and 'instance=~"$instance"' in sel, expr


def alert_queries() -> list[str]:
    """Each alert's query: its expression without the final threshold comparison."""
    rules = yaml.safe_load((GRAFANA / "alerts.yml").read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            m = re.fullmatch(r"(.+?)\s*(==|!=|>=|<=|>|<)\s*[0-9.]+", rule["expr"].strip())
            assert m, rule["expr"]
            out.append(m.group(1))
    return out


async def test_promtool_accepts_the_alert_rules() -> None:
    promtool = require_binary("promtool", "prometheus")
    done = await trio.run_process(
        [promtool, "check", "rules", str(GRAFANA / "alerts.yml")], capture_stdout=True, check=False
    )
    count = sum(
        len(g["rules"]) for g in yaml.safe_load((GRAFANA / "alerts.yml").read_text())["groups"]
    )
    assert done.returncode == 0 and f"SUCCESS: {count} rules found".encode() in done.stdout


async def test_every_dashboard_and_alert_expression_has_data(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    prometheus = require_binary("prometheus")
    gw: Gateway = await gateway_factory(
        simulator={"devices": 100, "rate_hz": 5}, mqtt={"url": mosquitto.url}
    )
    port = free_port()
    config = tmp_path / "prometheus.yml"
    (tmp_path / "alerts.yml").write_text((GRAFANA / "alerts.yml").read_text())
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: gateway\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw.admin_port}']}}]\n"
    )
    proc = await trio.lowlevel.open_process(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clients = [GatewayClient(url(gw), ["#"]) for _ in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            for c in clients:
                await nursery.start(c.run)
            await mosquitto.publish("telemetry/x/1", b"{bad json")  # a rejection series
            with trio.fail_after(30):
                while True:
                    try:
                        if (await http_get(port, "/-/ready"))[0] == 200:
                            break
                    except OSError:  # not listening yet
                        pass
                    await trio.sleep(0.2)

            async def query(expr: str) -> list[Any]:
                status, _, body = await http_get(
                    port, "/api/v1/query?query=" + urllib.parse.quote(expr)
                )
                doc = orjson.loads(body)
                assert status == 200 and doc["status"] == "success", (expr, doc)
                return list(doc["data"]["result"])

            with trio.fail_after(30):  # enough scrapes for the [1m] rates
                while True:
                    series = await query('up{job="gateway"}[10s]')
                    if series and len(series[0]["values"]) >= 4:
                        break
                    await trio.sleep(0.5)
            # one gateway of several, picked by its instance, as the dashboard's variables do
            one = dashboard_exprs("gateway", f"127.0.0.1:{gw.admin_port}")
            every = dashboard_exprs("gateway", ".*")
            empty = [e for e in [*one, *every, *alert_queries()] if not await query(e)]
            other = dashboard_exprs("gateway", "127.0.0.1:1")  # no such instance: no data
            assert not await query(other[0])
            # the variables' own queries (label_values of gateway_build_info)
            (info,) = await query('gateway_build_info{job=~"gateway"}')
            assert info["metric"]["instance"] == f"127.0.0.1:{gw.admin_port}"
            nursery.cancel_scope.cancel()
        assert empty == []
    finally:
        await stop_process(proc)


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_dashboard_uses_only_metrics_the_gateway_exports(expr: str) -> None:
    names = set(re.findall(r"\b(gateway_[a-z_]+|process_[a-z_]+)", expr))
    exported = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for name in names:
        base = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert f"`{base}" in exported, f"{name} is not in docs/metrics.md"
