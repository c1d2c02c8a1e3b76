"""Chaos under load: 5 cycles of random broker faults and screens joining and leaving
while the fleet publishes 5,000 msg/s. Afterwards the gateway is alive, nothing
leaked (tasks, fds, RSS), every screen equals /api/snapshot, and the loop never
lagged past the bound. Seeded: the seed is printed, ``CHAOS_SEED=<n>`` replays it.
Bounded (about a minute) and part of the default run."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.client import GatewayClient
from gateway.looplag import LagWindow
from tests.gw import url
from tests.reliability.mqtt_rig import (
    FAULTS,
    SCREEN_FILTER,
    Rig,
    count_tasks,
    open_fds,
    rss_mib,
)

SCREENS = 100
CYCLES = 5
#: generous: the budget is a 100 ms max, but the gateway shares this process with the
#: test's screens and this machine with others (at a load of 9 on 2 cores the maxima
#: reached 0.6 s); the stalls this catches took seconds (13.5 s before the fix)
LAG_MAX_S = 1.0
FD_SLACK = 6  # broker and simulator process handles come and go
RSS_GROWTH_MIB = 60.0


@pytest.mark.chaos
async def test_random_broker_faults_and_screen_churn_under_load_leave_no_trace(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nchaos seed {seed} (replay: CHAOS_SEED={seed})")
    rng = random.Random(seed)
    rig = Rig(tmp_path)
    scopes: dict[GatewayClient, trio.CancelScope] = {}

    async def screen(c: GatewayClient, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            scopes[c] = scope
            await c.run(task_status=task_status)

    async def join(nursery: trio.Nursery, n: int) -> None:
        assert rig.gw is not None
        for _ in range(n):
            c = GatewayClient(url(rig.gw), [SCREEN_FILTER], rate_hz=1, backoff_cap_s=2.0)
            await nursery.start(screen, c)
            rig.screens.append(c)

    def leave(n: int) -> None:
        for c in rng.sample(rig.screens, n):
            rig.screens.remove(c)
            scopes.pop(c).cancel()

    try:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery, gateway_factory)
                gw = rig.gw
                assert gw is not None and gw.mqtt is not None
                await rig.start_fleet()
                async with trio.open_nursery() as screens:
                    await join(screens, SCREENS)
                    await rig.wait_for_data()
                    await trio.sleep(1)
                    rig.settled()  # the baselines
                    tasks0, fds0, rss = count_tasks(), open_fds(), [rss_mib()]
                    lags: list[LagWindow] = []
                    for cycle in range(CYCLES):
                        fault = rng.choice(FAULTS)
                        churn = rng.randint(5, 25)
                        with gw.looplag.window() as lag:
                            broke = time.time()  # data measured after this came after the recovery
                            await rig.inject(fault)
                            leave(churn)  # screens leave and join while the broker is away
                            await join(screens, churn)
                            await rig.while_down(fault)
                            assert await rig.ready() == 503 and await rig.healthy()
                            await rig.recover(fault)
                            churn = rng.randint(5, 25)
                            leave(churn)  # and while data flows again
                            await join(screens, churn)
                            await rig.wait_for_data(since=broke)
                        lags.append(lag)
                        rss.append(rss_mib())
                        print(f"cycle {cycle + 1}: {fault}, loop lag {lag.summary()}")
                    # nothing leaked: the same number of screens, the same tasks and fds
                    assert len(rig.screens) == SCREENS
                    with trio.fail_after(15):  # closed screens' sessions end on the server
                        while count_tasks() > tasks0 or open_fds() > fds0 + FD_SLACK:
                            await trio.sleep(0.1)
                    tasks1, fds1 = count_tasks(), open_fds()
                    print(f"tasks {tasks0} -> {tasks1}, fds {fds0} -> {fds1}, RSS MiB {rss}")
                    assert tasks1 == tasks0
                    assert abs(fds1 - fds0) <= FD_SLACK
                    assert max(rss) - rss[0] < RSS_GROWTH_MIB
                    assert all(lag.max < LAG_MAX_S for lag in lags), [w.summary() for w in lags]
                    assert await rig.stop_fleet() == "stopped cleanly"
                    truth = await rig.converge()
                    assert not any(stale for _, _, stale in truth.values())
                    assert gw.server.stats.internal_errors == 0
                    screens.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        await rig.close()
