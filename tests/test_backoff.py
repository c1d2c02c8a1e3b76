"""The reconnect backoff of the MQTT ingest and the simulator (gateway/backoff.py)."""

from __future__ import annotations

import random

import trio
import trio.testing

from gateway.backoff import Backoff, capped_doubling


async def test_a_broker_down_for_thousands_of_attempts_never_overflows_the_doubling() -> None:
    """``base * 2**n`` overflows a float at n = 1,024: a broker down overnight (about a
    thousand attempts at the 60 s cap) would have ended the ingest's loop, and the
    gateway with it."""
    b = Backoff(1.0, 60.0, 60.0, random.Random(1))
    delays = [b.next_delay() for _ in range(5_000)]
    assert b.failures == 5_000
    assert all(1.0 <= d <= 60.0 for d in delays)
    assert max(delays[-100:]) > 50  # at the cap, spread over [low, high]
    assert capped_doubling(0.5, 30.0, 10**9) == 30.0
    assert [capped_doubling(0.5, 30.0, n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


async def test_the_count_starts_afresh_only_after_a_connection_stayed_up_stable_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = Backoff(0.5, 30.0, 10.0, random.Random(2))
    for n in range(1, 4):  # attempts that failed (however long they took)
        await trio.sleep(12.0)
        b.next_delay()
        assert b.failures == n
    b.up()
    await trio.sleep(9.9)  # lost before stable_s
    b.next_delay()
    assert b.failures == 4
    b.up()
    await trio.sleep(10.0)  # stayed up stable_s
    assert b.next_delay() <= 1.0 and b.failures == 1
    await trio.sleep(30.0)  # a failed attempt after it: the up() was spent
    b.next_delay()
    assert b.failures == 2


async def test_connections_lost_together_come_back_spread_out() -> None:
    """Jitter from the first failure: a fleet's connections, or several gateways, all
    dropped by one broker restart do not come back at the same instant."""
    firsts = [Backoff(0.5, 30.0, 10.0, random.Random(seed)).next_delay() for seed in range(200)]
    assert all(0.5 <= d <= 1.0 for d in firsts)
    assert max(firsts) - min(firsts) > 0.4
