"""Heartbeat, auth deadline and token expiry, on Trio's MockClock.

The clock jumps only after 20 ms of real idleness, so bytes in flight on loopback
always arrive before virtual time moves on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt
import pytest
import trio
import trio.testing

from gateway.app import Gateway

from .rawws import RawWs


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_a_client_that_stops_answering_pings_is_dropped_in_time(
    clock: trio.testing.MockClock, gateway_factory: Callable[..., Any]
) -> None:
    gw: Gateway = await gateway_factory(server={"heartbeat_s": 15.0, "pong_timeout_s": 10.0})
    quiet = await RawWs.connect(gw.port)  # answers nothing: a dead peer behind a NAT
    await quiet.recv_json()
    alive = await RawWs.connect(gw.port)
    await alive.recv_json()
    start = trio.current_time()
    closed_at: list[float] = []

    async def watch_quiet() -> None:
        while True:
            opcode, _ = await quiet.recv_frame()
            if opcode == -1:
                closed_at.append(trio.current_time())
                return
            assert opcode == 9  # the ping it never answers

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_quiet)
        for _ in range(3):  # the live client answers every ping and stays
            opcode, payload = await alive.recv_frame()
            assert opcode == 9, opcode
            await alive.send_raw(alive.frame(payload, opcode=10))
    # dropped after its first unanswered ping: interval + timeout + one sweep (0.5 s)
    assert closed_at and closed_at[0] - start <= 15.0 + 10.0 + 0.5 + 0.1
    assert gw.server.connections == 1
    assert gw.server.stats.disconnects["heartbeat"] == 1
    quiet.close()
    alive.close()


async def test_token_expiry_closes_the_connection(
    clock: trio.testing.MockClock, gateway_factory: Callable[..., Any]
) -> None:
    secret = "k" * 40
    gw: Gateway = await gateway_factory(
        auth={"mode": "jwt", "jwt_secret": secret, "jwt_leeway_s": 2.0},
        server={"heartbeat_s": 1000.0},
    )
    exp = int(gw.clock.wall()) + 30
    token = jwt.encode({"sub": "w", "exp": exp, "topics": ["#"]}, secret, algorithm="HS256")
    ws = await RawWs.connect(gw.port, headers={"Authorization": f"Bearer {token}"})
    await ws.recv_json()
    assert await ws.close_code_at_end() == 4001
    # closed after exp + leeway, within one sweep
    assert exp + 2.0 <= gw.clock.wall() <= exp + 2.0 + 1.0
    ws.close()
