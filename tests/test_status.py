"""gateway/status.py: the figures of the status line, and the line over time."""

from __future__ import annotations

import io
import logging
import re

import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from gateway.app import Gateway, build
from gateway.status import SLICE, StatusLogHandler, StatusReporter, count, format_line
from tests.gw import make_config, start_gateway, url
from tests.turns import others_turns_during


def gateway_with(devices: int, plain: int = 0) -> Gateway:
    gw = build(make_config())
    now = gw.clock.wall()
    for i in range(devices):
        gw.store.apply(f"berlin/line1/d{i}", {"t": 1.0}, now)
        gw.store.set_presence(f"berlin/line1/d{i}", i % 4 != 0, now)
    for i in range(plain):  # topics whose device reports no presence
        gw.store.apply(f"plant/x{i}", {"t": 1.0}, now - 5)
    return gw


async def test_figures_count_devices_topics_and_the_newest_data() -> None:
    gw = gateway_with(40, plain=10)
    f = await count(gw)
    assert (f.devices, f.online, f.topics, f.screens) == (40, 30, 50, 0)
    assert f.newest == pytest.approx(gw.clock.wall(), abs=1.0)
    line = format_line(f, 12.4, f.newest + 2.5)  # type: ignore[operator]
    assert line == "devices 30/40 online | topics 50 | screens 0 | 12 msg/s | data age 2.5 s"
    empty = await count(build(make_config()))
    assert "no data yet" in format_line(empty, 0.0, 0.0)


async def test_a_large_store_is_walked_in_slices_with_checkpoints() -> None:
    gw = gateway_with(5 * SLICE + 7)
    f, others_ran = await others_turns_during(lambda: count(gw))
    assert f.devices == 5 * SLICE + 7
    assert others_ran >= 3  # the loop ran between the slices


async def test_topics_added_during_the_walk_keep_the_last_device_figures() -> None:
    gw = gateway_with(2 * SLICE)
    previous = await count(gw)

    async def grow() -> None:  # a new topic whenever the walk lets others run
        for i in range(1_000_000):
            gw.store.set_presence(f"new/{i}", True, gw.clock.wall())
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(grow)
        f = await count(gw, previous)
        nursery.cancel_scope.cancel()
    assert (f.devices, f.online) == (previous.devices, previous.online)
    assert f.topics > 2 * SLICE


async def test_periodic_log_lines_and_the_summary(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway_with(4)
    reporter = StatusReporter(None, interval_s=60.0)
    caplog.set_level(logging.INFO, logger="gateway.status")

    async def feed() -> None:  # 10 accepted device messages per second
        while True:
            await trio.sleep(0.1)
            gw.store.apply("berlin/line1/d1", {"t": trio.current_time()}, gw.clock.wall())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        nursery.start_soon(reporter.run, gw)
        await trio.sleep(150)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.status"]
    assert len(lines) == 2  # at 60 s and 120 s
    assert all("devices 3/4 online | topics 4 | screens 0 | 10 msg/s" in x for x in lines)
    summary = await reporter.summary(gw)
    assert re.match(r"ran 2 min 30 s: 1,(49\d|50\d) device messages \(10/s\), 4 topics", summary)


def test_the_terminal_line_stays_below_log_records() -> None:
    out = io.StringIO()
    handler = StatusLogHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.show("devices 1/1 online")
    handler.emit(logging.LogRecord("x", logging.INFO, "", 0, "a log line", None, None))
    handler.finish()
    assert out.getvalue() == (
        "\r\x1b[Kdevices 1/1 online"  # the line
        "\r\x1b[Ka log line\n"  # cleared, the record
        "devices 1/1 online"  # drawn again
        "\r\x1b[K"  # and cleared at exit
    )


async def test_the_summary_counts_the_screens_without_a_status_line() -> None:
    """With ``--status-interval 0`` nothing samples the screens: the summary, written
    after every screen is gone, still says how many were open at once."""
    async with trio.open_nursery() as nursery:
        gw = await start_gateway(nursery)
        reporter = StatusReporter(None, interval_s=0)
        reporter.started_wall, reporter.started_mono = gw.clock.wall(), gw.clock.mono()
        async with open_websocket_url(url(gw)) as a, open_websocket_url(url(gw)) as b:
            for ws in (a, b):
                await ws.get_message()  # welcome: the session is registered
            async with open_websocket_url(url(gw)) as c:
                await c.get_message()
        with trio.fail_after(10):
            while gw.server.connections:
                await trio.sleep(0.01)
        summary = await reporter.summary(gw)
        nursery.cancel_scope.cancel()
    assert summary.endswith(" 3 screens at most"), summary
