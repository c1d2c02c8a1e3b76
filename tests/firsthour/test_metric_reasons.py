"""docs/metrics.md and a live /metrics list the same label values, both ways.

A reader builds dashboards and alerts from the table; a value the docs promise must
be a series from the start, and a value the gateway exports must be explained.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.serve.httpget import http_get

DOCS = Path(__file__).resolve().parents[2] / "docs"


def protocol_error_codes() -> set[str]:
    section = (DOCS / "protocol.md").read_text().split("| error code | meaning |")[1]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def documented() -> dict[str, tuple[str, set[str]]]:
    """metric -> (label, values) from the table's labels column."""
    out: dict[str, tuple[str, set[str]]] = {}
    for line in (DOCS / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`gateway_"):
            continue
        m = re.fullmatch(r"`([a-z_]+)`: (.+)", cells[2])
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
        out[cells[0].strip("`")] = (m.group(1), values)
    return out


def test_the_docs_table_is_parsed() -> None:
    doc = documented()
    assert doc["gateway_websocket_disconnects"][0] == "reason"
    assert "bad_filter" in doc["gateway_client_message_rejections"][1]
    assert len(doc) >= 10


async def test_docs_and_a_live_metrics_list_the_same_label_values(gateway: Gateway) -> None:
    status, _, body = await http_get(gateway.admin_port, "/metrics")
    assert status == 200
    exported: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if not family.name.startswith("gateway_") or family.type == "histogram":
            continue
        for sample in family.samples:
            for label, value in sample.labels.items():
                exported.setdefault(family.name, (label, set()))[1].add(value)
    exported.pop("gateway_build_info")  # the version, not a reason
    doc = documented()
    assert sorted(exported) == sorted(doc), "labelled metrics differ"
    for name, (label, values) in doc.items():
        got_label, got = exported[name]
        assert got_label == label, name
        assert got - values == set(), f"{name}: exported but not in docs/metrics.md"
        assert values - got == set(), f"{name}: in docs/metrics.md but not exported"
