"""/api/meta, /api/alarms and /api/history: the same tokens and grants as /api/snapshot;
an identity sees the alarms of the devices it may see, over the WebSocket too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.app import Gateway

from .httpget import http_get
from .rawws import RawWs

HALL1 = "hall1-token-0123456789ab"
OP1 = "hall1-operator-0123456789"
AUTH = {
    "mode": "static",
    "tokens": [
        {"name": "hall1", "token": HALL1, "grants": ["acme/hall1/#"]},
        {"name": "op1", "token": OP1, "grants": ["acme/hall1/#"], "ack": True},
    ],
}
RULE = {"name": "hot", "filter": "acme/#", "condition": "high", "field": "t", "threshold": 50}


async def test_grants_cover_alarms_meta_and_history(gateway_factory: Callable[..., Any]) -> None:
    gw: Gateway = await gateway_factory(
        auth=AUTH,
        alarms={"rules": [RULE]},
        meta={
            "name_field": "label",
            "names": {"acme/hall1/m1": "Mixer 1"},
            "groups": {"hall": 1},
            "fields": [{"filter": "acme/#", "field": "t", "unit": "°C", "decimals": 1}],
        },
    )
    now = gw.clock.wall()
    for topic in ("acme/hall1/m1", "acme/hall2/m9"):
        gw.store.apply(topic, {"t": 60.0, "label": topic.upper()}, now)
    auth = {"Authorization": f"Bearer {HALL1}"}
    status, _, body = await http_get(gw.port, "/api/alarms")
    assert status == 401
    status, _, body = await http_get(gw.port, "/api/alarms", auth)
    alarms = orjson.loads(body)["alarms"]
    assert [a["alarm"] for a in alarms] == ["$alarms/hot/acme/hall1/m1"]  # not hall2's
    assert alarms[0]["device"] == "Mixer 1" and alarms[0]["state"] == "active_unacked"

    status, _, body = await http_get(gw.port, "/api/snapshot?filter=%24alarms/%23", auth)
    assert list(orjson.loads(body)["topics"]) == ["$alarms/hot/acme/hall1/m1"]
    status, _, body = await http_get(gw.port, "/api/meta", auth)
    meta = orjson.loads(body)
    assert meta["devices"] == {"acme/hall1/m1": {"name": "Mixer 1", "groups": {"hall": "hall1"}}}
    assert meta["fields"] == [
        {"filter": "acme/#", "field": "t", "name": "t", "unit": "°C", "decimals": 1}
    ]
    status, _, body = await http_get(gw.port, "/api/history?topic=acme/hall2/m9&field=t", auth)
    assert status == 404  # outside the grants: as if it did not exist
    status, _, body = await http_get(gw.port, "/api/history?topic=acme/hall1/m1&seconds=5", auth)
    doc = orjson.loads(body)
    assert (
        status == 200
        and doc["fields"]["t"]["last"][-1] == 60.0
        and len(doc["fields"]["t"]["last"]) == 5
    )

    ws = await RawWs.connect(gw.port, headers=auth)
    try:
        welcome = await ws.recv_json()
        assert welcome["meta"] == {"url": "/api/meta", "version": meta["version"]}
        await ws.send_json({"type": "subscribe", "id": "a", "filters": ["$alarms/#"]})
        ack = await ws.recv_json()
        assert ack["op"] == "subscribe" and ack["restricted"] is True
        snap = await ws.recv_json()
        assert snap["type"] == "snapshot" and snap["topic"] == "$alarms/hot/acme/hall1/m1"
        await ws.send_json(
            {"type": "ack_alarm", "id": "x", "alarms": ["$alarms/hot/acme/hall2/m9"]}
        )
        refused = await ws.recv_json()
        assert refused["type"] == "error" and refused["code"] == "ack_not_allowed"
    finally:
        ws.close()
    ws = await RawWs.connect(gw.port, headers={"Authorization": f"Bearer {OP1}"})
    try:
        await ws.recv_json()
        hidden = ["$alarms/hot/acme/hall2/m9"]
        await ws.send_json({"type": "ack_alarm", "id": "y", "alarms": hidden})
        refused = await ws.recv_json()
        assert refused["code"] == "unknown_alarm" and refused["ref"] == "y"  # not visible
        assert gw.store.get(hidden[0]).fields["state"] == "active_unacked"  # type: ignore[union-attr]
        await ws.send_json(
            {"type": "ack_alarm", "id": "z", "alarms": ["$alarms/hot/acme/hall1/m1"]}
        )
        assert (await ws.recv_json())["type"] == "ack"
    finally:
        ws.close()
