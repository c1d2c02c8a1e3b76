"""Alarm delays in the running gateway, on Trio's MockClock: the on-delay holds the
raise back, the alarm task raises it within one alarm tick after, and a value inside
the hysteresis does not clear it."""

from __future__ import annotations

import trio
import trio.testing

from gateway.app import ALARM_TICK_S
from tests.gw import start_gateway

RULE = {
    "name": "hot",
    "filter": "oven/#",
    "condition": "high",
    "field": "c",
    "threshold": 200,
    "hysteresis": 10,
    "on_delay_s": 5,
    "off_delay_s": 2,
    "severity": "major",
}
ALARM = "$alarms/hot/oven/1"


async def test_on_delay_tick_and_hysteresis(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    gw = await start_gateway(nursery, alarms={"rules": [RULE]})
    try:

        def state() -> str | None:
            st = gw.store.get(ALARM)
            return None if st is None else st.fields["state"]

        gw.store.apply("oven/1", {"c": 150}, gw.clock.wall())
        await trio.sleep(1)
        crossed = trio.current_time()
        gw.store.apply("oven/1", {"c": 205}, gw.clock.wall())
        await trio.sleep_until(crossed + 4.9)
        assert state() is None  # not before the on-delay
        await trio.sleep_until(crossed + 5 + ALARM_TICK_S + 0.01)
        assert state() == "active_unacked"  # within one alarm tick after it
        raised_at = gw.store.get(ALARM).fields["raised_at"]  # type: ignore[union-attr]
        assert 5 <= raised_at - (gw.clock.wall() - (trio.current_time() - crossed)) <= 5.3
        gw.store.apply("oven/1", {"c": 191}, gw.clock.wall())  # inside the hysteresis
        await trio.sleep(10)
        assert state() == "active_unacked"
        gw.store.apply("oven/1", {"c": 189}, gw.clock.wall())
        await trio.sleep(1.9)
        assert state() == "active_unacked"  # off-delay running
        await trio.sleep(0.1 + ALARM_TICK_S + 0.01)
        assert state() == "cleared_unacked"
    finally:
        gw.server.request_shutdown()
