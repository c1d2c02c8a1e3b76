"""Logs never contain tokens or message bodies, whatever goes wrong."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio

from gateway.app import Gateway
from tests.broker import Mosquitto
from tests.ingest.test_mqtt import until_subscribed
from tests.serve.rawws import RawWs
from tests.serve.test_security import JWT_AUTH, good_claims, hs

MARK = "SeCrEt4242"


async def test_tokens_and_bodies_never_reach_the_logs(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw: Gateway = await gateway_factory(
        auth=JWT_AUTH,
        server={"auth_timeout_s": 0.5, "max_protocol_errors": 3},
        mqtt={"url": f"mqtt://127.0.0.1:{mosquitto.port}", "reconnect_min_s": 0.1},
    )
    good = hs(good_claims(sub="wall-1", topics=["#"]))
    bad = [
        hs(good_claims(sub=f"x{MARK}", aud="other")),  # a valid-looking token, refused
        f"{MARK}.{MARK}.{MARK}",
        hs(good_claims(sub=MARK), key="k" * 40),
    ]
    for token in bad:  # in the header, the query and the auth message
        ws = await RawWs.connect(gw.port, headers={"Authorization": f"Bearer {token}"})
        ws.close()
        ws = await RawWs.connect(gw.port, path=f"/ws?access_token={token}")
        ws.close()
        ws = await RawWs.connect(gw.port)
        await ws.recv_json()
        await ws.send_json({"type": "auth", "token": token})
        with trio.fail_after(5):
            await ws.close_code_at_end()
        ws.close()
    ws = await RawWs.connect(gw.port, headers={"Authorization": f"Bearer {good}"})
    await ws.recv_json()
    for body in (  # bad messages carrying the mark: errors, then close 4400
        {"type": "subscribe", "id": MARK, "filters": [f"a/#/{MARK}"]},
        {"type": MARK},
        {"type": "resume", "epoch": MARK, "topics": MARK},
        {"type": "subscribe", "id": "x", "filters": [MARK + "/#"], "rate_hz": MARK},
    ):
        await ws.send_json(body)
    await ws.send_raw(ws.frame(f'{{"type": "{MARK}'.encode()))  # not even JSON
    with trio.fail_after(5):
        await ws.close_code_at_end()
    ws.close()
    await until_subscribed(gw)  # a publish before the SUBACK may be missed
    for payload in (f'{{"v": "{MARK}"'.encode(), MARK.encode(), orjson.dumps({MARK: [1]})):
        await mosquitto.publish("telemetry/a/b", payload)
        await mosquitto.publish("status/a/b", payload)
    assert gw.mqtt is not None
    with trio.fail_after(5):  # all six handled (and logged, if they are)
        while gw.mqtt.stats.messages["mqtt"] < 6 or sum(gw.mqtt.stats.rejected.values()) < 5:
            await trio.sleep(0.05)
    text = caplog.text
    assert "message refused: bad_filter" in text  # the failures were logged...
    assert "MQTT message on 'telemetry/a/b' refused" in text
    for secret in [MARK, good, *bad]:
        assert secret not in text  # ...without the tokens or the bodies
