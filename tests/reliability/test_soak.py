"""A randomized soak (``make soak``, 10 minutes; SOAK_SECONDS to change it): screens come
and go with random tokens, subscriptions, lifetimes and misbehaviour while a simulated
fleet updates. Pass: no internal error, no gap on any screen, memory without a growth
trend, and every task gone once the screens are."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from gateway.app import Gateway
from gateway.core.mirror import Mirror
from gateway.core.protocol import Delta, Snapshot, decode_server
from tests.reliability.test_ws_garbage import CASES, live_tasks
from tests.serve.rawws import RawWs
from tests.serve.test_security import JWT_AUTH, good_claims, hs

FILTERS = ["#", "berlin/#", "paris/+/+", "+/line1/#", "rome/line2/env-00003", "nothing/#"]


def rss() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def token(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.75:
        grants = rng.sample(FILTERS, rng.randint(0, 3))
        return hs(good_claims(sub=f"wall-{rng.randint(1, 9)}", topics=grants))
    if kind < 0.85:
        return hs(good_claims(exp=int(time.time()) - 10))
    if kind < 0.95:
        return "garbage." + "x" * rng.randint(0, 50)
    return hs(good_claims(), key="k" * 40)


async def screen(gw: Gateway, rng: random.Random, counts: dict[str, int]) -> None:
    how = rng.choice(["header", "query", "message"])
    tok = token(rng)
    path = f"/ws?access_token={tok}" if how == "query" else "/ws"
    headers = {"Authorization": f"Bearer {tok}"} if how == "header" else {}
    try:
        ws = await RawWs.connect(
            gw.port, path=path, headers=headers, rcvbuf=rng.choice([None, 4096])
        )
    except OSError:
        counts["refused"] += 1
        return
    if ws.status != 101:
        counts["refused"] += 1
        ws.close()
        return
    mirror = Mirror()
    try:
        with trio.move_on_after(rng.uniform(0.1, 8.0)):
            welcome = await ws.recv_json()
            mirror.set_epoch(welcome["epoch"])
            if how == "message":
                await ws.send_json({"type": "auth", "token": tok})
            for i in range(rng.randint(1, 3)):
                filters = rng.sample(FILTERS, rng.randint(1, 2))
                await ws.send_json({"type": "subscribe", "id": f"s{i}", "filters": filters})
            if rng.random() < 0.1:
                await ws.send_raw(rng.choice(list(CASES.values()))[0])
            if rng.random() < 0.1:
                await trio.sleep(10)  # a screen that stops reading
            while True:
                opcode, payload = await ws.recv_frame()
                if opcode in (8, -1):
                    counts["closed_by_gateway"] += 1
                    return
                if opcode != 1:
                    continue
                for msg in decode_server(payload):
                    if isinstance(msg, Snapshot | Delta):
                        assert mirror.apply(msg) != "gap"
                        counts["state_messages"] += 1
                if rng.random() < 0.01:
                    await ws.send_json({"type": "unsubscribe", "id": "s0"})
        counts["lived"] += 1
    except (ConnectionError, OSError):
        counts["reset"] += 1
    finally:
        if rng.random() < 0.5:
            with contextlib.suppress(OSError):
                await ws.send_raw(ws.frame(b"\x03\xe8", opcode=8))
        ws.close()


@pytest.mark.soak
async def test_randomized_soak(gateway_factory: Callable[..., Any]) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    gw: Gateway = await gateway_factory(
        auth=JWT_AUTH,
        simulator={"devices": 300, "rate_hz": 5},
        server={"auth_timeout_s": 1.0, "stall_s": 2.0, "message_timeout_s": 1.0},
    )
    rng = random.Random(int(os.environ.get("SOAK_SEED", "1")))
    counts: dict[str, int] = {
        k: 0 for k in ("refused", "lived", "reset", "closed_by_gateway", "state_messages")
    }
    await trio.sleep(1.0)
    baseline = live_tasks()
    samples: list[tuple[float, int]] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        while (elapsed := trio.current_time() - start) < seconds:
            for _ in range(rng.randint(1, 8)):
                nursery.start_soon(screen, gw, random.Random(rng.random()), counts)
            await trio.sleep(0.1)
            if not samples or elapsed - samples[-1][0] >= 10:
                samples.append((elapsed, rss()))
                print(f"soak {elapsed:5.0f} s: rss {rss() >> 20} MiB, {counts}", flush=True)
    with trio.fail_after(10):
        while live_tasks() > baseline:
            await trio.sleep(0.1)
    assert gw.server.stats.internal_errors == 0
    assert counts["lived"] > 0 and counts["refused"] > 0 and counts["state_messages"] > 0
    second = samples[len(samples) // 2 :]
    n = len(second)
    mx = sum(t for t, _ in second) / n
    my = sum(b for _, b in second) / n
    slope = sum((t - mx) * (b - my) for t, b in second) / max(
        1e-9, sum((t - mx) ** 2 for t, _ in second)
    )
    growth_per_hour = slope * 3600 / 2**20
    print(f"soak: RSS trend over the second half {growth_per_hour:+.1f} MiB/h; {counts}")
    assert growth_per_hour < 20, growth_per_hour
