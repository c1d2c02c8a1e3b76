"""Heartbeat, auth deadline and token expiry, on Trio's MockClock.

The clock jumps only after 20 ms of real idleness, so bytes in flight on loopback
always arrive before virtual time moves on.
"""

from __future__ import annotations

import itertools
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


async def test_sparse_changes_never_exceed_the_subscription_rate(
    clock: trio.testing.MockClock, gateway_factory: Callable[..., Any]
) -> None:
    # Changes every 30 ms leave the hub idle between ticks; each one wakes it. The
    # screen asked for 10 Hz (tick 20 Hz): it must get at most one frame per 100 ms,
    # and every change must still arrive.
    gw: Gateway = await gateway_factory(server={"tick_hz": 20, "default_rate_hz": 10})
    gw.store.apply("site/a", {"v": 0}, gw.clock.wall())
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()  # welcome
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["site/#"], "rate_hz": 10})
    await ws.recv_json()  # ack
    await ws.recv_json()  # the snapshot
    frames: list[float] = []
    last_seq = 0

    async def read() -> None:
        nonlocal last_seq
        while True:
            msg = await ws.recv_json()
            frames.append(trio.current_time())
            items = msg["items"] if msg["type"] == "batch" else [msg]
            last_seq = max(last_seq, *(item["seq"] for item in items))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for i in range(1, 101):
            await trio.sleep(0.03)
            gw.store.apply("site/a", {"v": i}, gw.clock.wall())
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(frames)]
    assert min(gaps) >= 0.1 - 1e-9, min(gaps)
    assert len(frames) <= 3.0 / 0.1 + 2
    assert last_seq == gw.store.get("site/a").seq  # nothing lost, only coalesced
    ws.close()
