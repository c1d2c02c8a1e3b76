"""docs/metrics.md and a live /metrics list the same label values, both ways.

A reader builds dashboards and alerts from the table; a value the docs promise must
be a series from the start, and a value the gateway exports must be explained.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.serve.httpget import http_get

DOCS = Path(__file__).resolve().parents[2] / "docs"


def protocol_error_codes() -> set[str]:
    section = (DOCS / "protocol.md").read_text().split("| error code | meaning |")[1]
    table = section.split("\n\n", 1)[0]  # the table ends at the first blank line
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))


def documented() -> dict[str, dict[str, set[str]]]:
    """metric -> {label: values} from the table's labels column
    (```label`: a, b``, several labels separated by ``;``)."""
    out: dict[str, dict[str, set[str]]] = {}
    for line in (DOCS / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`gateway_"):
            continue
        labels: dict[str, set[str]] = {}
        for spec in cells[2].split("; "):
            m = re.fullmatch(r"`([a-z_]+)`(?: \(.*?\))?: (.+)", spec)
            if not m:
                continue
            values: set[str] = set()
            for item in m.group(2).split(", "):
                item = re.sub(r"\s*\(.*?\)", "", item).removeprefix("or ").strip()
                if item == "an error code of docs/protocol.md":
                    values |= protocol_error_codes()
                else:
                    assert re.fullmatch(r"[a-z0-9_]+", item), (cells[0], item)
                    values.add(item)
            labels[m.group(1)] = values
        if labels:
            out[cells[0].strip("`")] = labels
    return out


def test_the_docs_table_is_parsed() -> None:
    doc = documented()
    assert set(doc["gateway_websocket_disconnects"]) == {"reason"}
    assert "bad_filter" in doc["gateway_client_message_rejections"]["reason"]
    assert set(doc["gateway_alarm_transitions"]) == {"severity", "state"}
    assert len(doc) >= 10


async def test_docs_and_a_live_metrics_list_the_same_label_values(
    gateway_factory: Callable[..., Awaitable[Gateway]], tmp_path: Path
) -> None:
    # persistence on, so that its (conditional) metrics are exported too
    gateway = await gateway_factory(persist={"state_dir": str(tmp_path / "state")})
    status, _, body = await http_get(gateway.admin_port, "/metrics")
    assert status == 200
    exported: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if not family.name.startswith("gateway_") or family.type == "histogram":
            continue
        for sample in family.samples:
            for label, value in sample.labels.items():
                exported.setdefault(family.name, {}).setdefault(label, set()).add(value)
    exported.pop("gateway_build_info")  # the version, not a reason
    # --workers N only: checked against a live parent in tests/cluster/test_workers.py
    doc = {k: v for k, v in documented().items() if not k.startswith("gateway_cluster_")}
    assert sorted(exported) == sorted(doc), "labelled metrics differ"
    for name, labels in doc.items():
        assert sorted(exported[name]) == sorted(labels), name
        for label, values in labels.items():
            got = exported[name][label]
            assert got - values == set(), f"{name}{{{label}}}: exported but not in docs/metrics.md"
            assert values - got == set(), f"{name}{{{label}}}: in docs/metrics.md but not exported"
