"""Alarms end to end: a user's device (mosquitto_pub on the user's own topic and field)
crosses a rule's threshold; two WebSocket screens and an SSE stream see the alarm, one
operator acknowledges it with a request id, a retry gets the same answer, a viewer
without the ack grant is refused, and the alarm clears back to normal."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio

from gateway.app import Gateway
from tests.broker import Mosquitto
from tests.ingest.test_mqtt import until_subscribed
from tests.serve.httpget import http_get
from tests.serve.rawws import RawWs
from tests.serve.test_sse import EventStream

from .test_mqtt import FAST

OPERATOR = "operator-token-0123456789"
VIEWER = "viewer-token-0123456789ab"
AUTH = {
    "mode": "static",
    "tokens": [
        {"name": "operator", "token": OPERATOR, "grants": ["acme/#"], "ack": True},
        {"name": "viewer", "token": VIEWER, "grants": ["acme/#"]},
    ],
}
RULE = {
    "name": "overpressure",
    "filter": "acme/+/+",
    "condition": "high",
    "field": "pressure_bar",
    "threshold": 8.0,
    "hysteresis": 0.5,
    "severity": "critical",
    "message": "{device}: pressure {value} {unit} above {threshold} {unit}",
}
DEVICE = "acme/hall1/press7"
ALARM = f"$alarms/overpressure/{DEVICE}"


class View:
    """A screen's copy of the topics, from snapshots and deltas (batches unpacked)."""

    def __init__(self) -> None:
        self.topics: dict[str, dict[str, Any]] = {}
        self.replies: list[dict[str, Any]] = []
        self.changed = trio.Event()

    def feed(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "batch":
            for item in msg["items"]:
                self.feed(item)
            return
        if kind == "snapshot":
            self.topics[msg["topic"]] = dict(msg["fields"])
        elif kind == "delta":
            fields = self.topics.setdefault(msg["topic"], {})
            fields.update(msg.get("set", {}))
            for name in msg.get("unset", ()):
                fields.pop(name, None)
        else:
            self.replies.append(msg)
        self.changed.set()
        self.changed = trio.Event()

    def state(self) -> str | None:
        return self.topics.get(ALARM, {}).get("state")

    async def wait(self, pred: Callable[[View], bool]) -> None:
        with trio.fail_after(10):
            while not pred(self):
                await self.changed.wait()


async def ws_screen(
    nursery: trio.Nursery, gw: Gateway, token: str, filters: list[str]
) -> tuple[RawWs, View]:
    ws = await RawWs.connect(gw.port, path=f"/ws?access_token={token}")
    view = View()
    welcome = await ws.recv_json()
    assert welcome["type"] == "welcome"
    assert welcome["meta"]["url"] == "/api/meta"
    await ws.send_json({"type": "subscribe", "id": "s", "filters": filters})

    async def read() -> None:
        while True:
            try:
                view.feed(await ws.recv_json())
            except ConnectionError:
                return

    nursery.start_soon(read)
    await view.wait(lambda v: any(r.get("op") == "subscribe" for r in v.replies))
    return ws, view


async def sse_screen(nursery: trio.Nursery, gw: Gateway, token: str) -> tuple[EventStream, View]:
    stream = await EventStream.open(gw.port, f"filter=%24alarms%2F%23&access_token={token}")
    assert stream.status == 200
    view = View()

    async def read() -> None:
        while (ev := await stream.event()) is not None:
            view.feed(ev)

    nursery.start_soon(read)
    return stream, view


async def ack(ws: RawWs, view: View, req_id: str, alarms: list[str]) -> dict[str, Any]:
    before = len(view.replies)
    await ws.send_json({"type": "ack_alarm", "id": req_id, "alarms": alarms})
    await view.wait(lambda v: len(v.replies) > before)
    return v_last(view)


def v_last(view: View) -> dict[str, Any]:
    return view.replies[-1]


async def test_alarm_raised_seen_everywhere_acknowledged_once_and_cleared(
    gateway_factory: Callable[..., Any],
    mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    gw = await gateway_factory(
        mqtt={"url": mosquitto.url, **FAST},
        auth=AUTH,
        alarms={"rules": [RULE]},
        meta={"fields": [{"filter": "acme/#", "field": "pressure_bar", "unit": "bar"}]},
    )
    await until_subscribed(gw)  # SUBACK before the first publish
    sockets: list[Any] = []
    try:
        async with trio.open_nursery() as nursery:
            await scenario(nursery, gw, mosquitto, caplog, sockets)
            nursery.cancel_scope.cancel()
    finally:
        for sock in sockets:
            sock.close()


async def scenario(
    nursery: trio.Nursery,
    gw: Gateway,
    mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
    sockets: list[Any],
) -> None:
    op_ws, op = await ws_screen(nursery, gw, OPERATOR, ["acme/#", "$alarms/#"])
    viewer_ws, viewer = await ws_screen(nursery, gw, VIEWER, ["$alarms/#"])
    stream, sse = await sse_screen(nursery, gw, VIEWER)
    sockets += [op_ws, viewer_ws, stream]

    async def publish_and_wait(value: float) -> None:
        await mosquitto.publish(f"telemetry/{DEVICE}", f'{{"pressure_bar": {value}}}')
        with trio.fail_after(10):
            while (st := gw.store.get(DEVICE)) is None or st.fields["pressure_bar"] != value:
                await trio.sleep(0.005)

    await publish_and_wait(7.4)
    assert gw.store.get(ALARM) is None
    await publish_and_wait(8.3)
    # raised on the very change that crossed the threshold: in the store at once,
    # so it goes out with the next hub tick
    alarm = gw.store.get(ALARM)
    assert alarm is not None and alarm.fields["state"] == "active_unacked"
    assert alarm.fields["message"] == f"{DEVICE}: pressure 8.3 bar above 8 bar"
    for view in (op, viewer, sse):
        await view.wait(lambda v: v.state() == "active_unacked")
    assert sse.topics[ALARM]["raised_value"] == 8.3

    status, _, body = await http_get(gw.port, f"/api/alarms?access_token={VIEWER}")
    assert status == 200 and b'"active_unacked"' in body and b"overpressure" in body

    refused = await ack(viewer_ws, viewer, "v-1", [ALARM])
    assert refused["type"] == "error" and refused["code"] == "ack_not_allowed"
    assert refused["ref"] == "v-1"
    unknown = await ack(op_ws, op, "op-0", [ALARM, "$alarms/overpressure/acme/x/y"])
    assert unknown["type"] == "error" and unknown["code"] == "unknown_alarm"
    assert gw.store.get(ALARM).fields["state"] == "active_unacked"  # type: ignore[union-attr]

    first = await ack(op_ws, op, "op-1", [ALARM])
    assert first == {"type": "ack", "op": "ack_alarm", "id": "op-1", "alarms": [ALARM]}
    for view in (op, viewer, sse):
        await view.wait(lambda v: v.state() == "active_acked")
    assert viewer.topics[ALARM]["acked_by"] == "operator"
    seq = gw.store.get(ALARM).seq  # type: ignore[union-attr]
    assert await ack(op_ws, op, "op-1", [ALARM]) == first  # the retry: same answer
    assert gw.store.get(ALARM).seq == seq  # type: ignore[union-attr]  # and no change

    await publish_and_wait(7.7)  # inside the hysteresis: still active
    assert gw.store.get(ALARM).fields["state"] == "active_acked"  # type: ignore[union-attr]
    await publish_and_wait(7.2)  # cleared; acknowledged before, so back to normal
    for view in (op, viewer, sse):
        await view.wait(lambda v: v.state() == "normal")

    await publish_and_wait(9.1)  # raised again, cleared before anyone acknowledges
    await publish_and_wait(6.0)
    for view in (op, viewer):
        await view.wait(lambda v: v.state() == "cleared_unacked")
    assert (await ack(op_ws, op, "op-2", [ALARM]))["type"] == "ack"
    for view in (op, viewer, sse):
        await view.wait(lambda v: v.state() == "normal")

    audit = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    assert any("alarm ack by operator" in line and ALARM in line for line in audit)
    assert any("alarm ack retry by operator" in line and "op-1" in line for line in audit)
    assert any("viewer may not acknowledge" in line for line in audit)
    assert not any(OPERATOR in line or VIEWER in line for line in audit)


async def test_a_device_cannot_fake_hide_or_acknowledge_an_alarm(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    """The default routes map ``telemetry/<anything>`` to a topic: before, a device
    publishing to ``telemetry/$alarms/...`` overwrote a real alarm (shown normal and
    acknowledged on every wall while the pressure stayed high) or made a fake one
    (found by an outside check). Such messages are refused as ``reserved_topic``."""
    gw = await gateway_factory(mqtt={"url": mosquitto.url, **FAST}, alarms={"rules": [RULE]})
    await until_subscribed(gw)
    await mosquitto.publish(f"telemetry/{DEVICE}", '{"pressure_bar": 9.1}')
    with trio.fail_after(10):
        while (alarm := gw.store.get(ALARM)) is None:
            await trio.sleep(0.005)
    seq = alarm.seq
    spoofs = [
        f"telemetry/{ALARM}",  # hide the real one
        "telemetry/$alarms/fake/acme/hall1/press9",  # make one up
        f"status/{ALARM}",
    ]
    for topic in spoofs:
        await mosquitto.publish(topic, '{"state": "normal", "acked": true, "severity": "critical"}')
    assert gw.mqtt is not None
    with trio.fail_after(10):
        while gw.mqtt.stats.rejected["reserved_topic"] < len(spoofs):
            await trio.sleep(0.005)
    alarm = gw.store.get(ALARM)
    assert alarm is not None and alarm.seq == seq
    assert alarm.fields["state"] == "active_unacked" and not alarm.fields.get("acked")
    assert [t for t in gw.store.topics() if t.startswith("$")] == [ALARM]
    status, _, body = await http_get(gw.port, "/api/alarms")
    assert status == 200 and b"fake" not in body and b'"active_unacked"' in body
