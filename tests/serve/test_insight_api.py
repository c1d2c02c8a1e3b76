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


async def test_history_by_filter_is_an_even_sample_of_the_topics_an_identity_may_see(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(auth=AUTH)
    now = gw.clock.wall()
    for i in range(40):
        gw.store.apply(f"acme/hall1/m{i:02d}", {"t": float(i), "rpm": 100 + i}, now)
        gw.store.apply(f"acme/hall2/m{i:02d}", {"t": 90.0}, now)
        gw.store.apply(f"acme/hall1/v{i:02d}", {"open_pct": 50}, now)  # no `t`: not sampled
    auth = {"Authorization": f"Bearer {HALL1}"}
    path = "/api/history?filter=acme/%23&field=t&seconds=5&limit=8"
    status, _, _ = await http_get(gw.port, path)
    assert status == 401
    status, _, body = await http_get(gw.port, path, auth)
    doc = orjson.loads(body)
    assert status == 200 and doc["matched"] == 40  # hall1's only: the grants hold
    topics = [item["topic"] for item in doc["items"]]
    assert topics == [f"acme/hall1/m{i:02d}" for i in range(0, 40, 5)]  # spread, not the first 8
    assert all(
        list(item["fields"]) == ["t"] and len(item["fields"]["t"]["last"]) == 5
        for item in doc["items"]
    )
    assert doc["items"][1]["fields"]["t"]["last"][-1] == 5.0
    # every field without `field`; the default limit; nothing matched is an empty sample
    status, _, body = await http_get(gw.port, "/api/history?filter=acme/hall1/%2B", auth)
    doc = orjson.loads(body)
    assert doc["matched"] == 80 and len(doc["items"]) == 25
    assert set(doc["items"][0]["fields"]) == {"t", "rpm"}
    status, _, body = await http_get(gw.port, "/api/history?filter=acme/hall2/%23", auth)
    assert (status, orjson.loads(body)) == (200, {"matched": 0, "items": []})
    for bad, code in (
        ("limit=0", "bad_limit"),
        ("limit=101", "bad_limit"),
        ("seconds=-1", "bad_seconds"),
    ):
        status, _, body = await http_get(gw.port, f"/api/history?filter=%23&{bad}", auth)
        assert (status, orjson.loads(body)["error"]) == (400, code)
    status, _, body = await http_get(gw.port, "/api/history?filter=a/%23/b", auth)
    assert (status, orjson.loads(body)["error"]) == (400, "bad_filter")
