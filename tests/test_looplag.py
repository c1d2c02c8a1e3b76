"""The event-loop lag monitor: what it records, and that /metrics carries it."""

from __future__ import annotations

import math
import time

import trio

from gateway.looplag import LagWindow, LoopLag, from_metrics
from tests.serve.httpget import http_get


def test_window_quantiles_max_and_difference() -> None:
    w = LagWindow()
    for _ in range(98):
        w.observe(0.0004)
    w.observe(0.02)
    w.observe(0.3)
    assert w.count == 100
    assert w.quantile(0.5) == 0.001
    assert w.quantile(0.99) == 0.025  # the 99th sample is 20 ms: bucket (10, 25] ms
    assert w.quantile(1.0) == 0.5
    assert w.max == 0.3
    earlier = LagWindow()
    earlier.observe(0.0004)
    diff = w.minus(earlier)
    assert diff.count == 99
    assert diff.counts[0] == 97
    w.observe(99.0)
    assert w.quantile(1.0) == math.inf
    assert LagWindow().summary()["p99_ms"] == 0


async def test_a_blocked_loop_shows_as_lag() -> None:
    monitor = LoopLag(interval_s=0.005)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        with monitor.window() as quiet:
            await trio.sleep(0.1)
        with monitor.window() as blocked:
            await trio.sleep(0.02)
            time.sleep(0.15)  # noqa: ASYNC251 (a burst handled without a checkpoint)
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert quiet.count >= 5
    assert quiet.max < 0.1
    assert blocked.max >= 0.14
    assert blocked.quantile(1.0) >= 0.14
    assert monitor.recent_max(trio.current_time()) >= 0.14
    assert monitor.total.count >= quiet.count + blocked.count


def spin(seconds: float) -> None:
    """Hold the loop on the CPU for ``seconds`` of its thread's CPU time (a step of
    pure Python work): counted in CPU time, a machine that takes the CPU away meanwhile
    makes the step longer, never its running part smaller."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_the_running_part_counts_the_loops_cpu_time_not_its_blocked_time() -> None:
    """A step that computes makes lag with as large a running part; a thread that is
    not on the CPU (here: blocked in a system call; the machine's stalls, or waiting
    for the GIL, look the same) makes the same lag with none."""
    monitor = LoopLag(interval_s=0.005)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.sleep(0.02)
        with monitor.window() as lag, monitor.window(running=True) as running:
            spin(0.15)
            await trio.sleep(0.02)
        assert lag.max >= 0.14
        assert running.max >= 0.12  # the thread ran through it
        with monitor.window() as lag, monitor.window(running=True) as running:
            time.sleep(0.15)  # noqa: ASYNC251 (the thread not running)
            await trio.sleep(0.02)
        assert lag.max >= 0.14
        assert running.max < 0.05
        assert monitor.recent_max(trio.current_time()) >= 0.14
        assert monitor.recent_max(trio.current_time(), running=True) >= 0.12
        nursery.cancel_scope.cancel()
    assert monitor.running.count == monitor.total.count


async def test_metrics_expose_the_histogram_and_the_recent_max(gateway) -> None:  # type: ignore[no-untyped-def]
    await trio.sleep(0.05)
    _, _, body = await http_get(gateway.admin_port, "/metrics")
    before = from_metrics(body.decode())
    running_before = from_metrics(body.decode(), "gateway_event_loop_lag_running_seconds")
    spin(0.12)  # the loop held on purpose
    await trio.sleep(0.05)
    _, _, body = await http_get(gateway.admin_port, "/metrics")
    text = body.decode()
    after = from_metrics(text)
    between = after.minus(before)
    assert between.count >= 1
    assert between.max_bound() >= 0.1
    running = from_metrics(text, "gateway_event_loop_lag_running_seconds").minus(running_before)
    assert running.count == between.count
    assert running.max_bound() >= 0.1
    (line,) = [
        ln for ln in text.splitlines() if ln.startswith("gateway_event_loop_lag_running_max")
    ]
    assert float(line.split()[1]) >= 0.1
    (line,) = [ln for ln in text.splitlines() if ln.startswith("gateway_event_loop_lag_max_s")]
    assert float(line.split()[1]) >= 0.11
    assert gateway.looplag.total.max >= 0.11


def test_the_running_part_does_not_count_cpu_time_from_before_the_sleeper_slept() -> None:
    """One batch: a task computes 100 ms, the sleeper wakes and sleeps again (due 5 ms
    later), another task blocks 200 ms; the next batch wakes the sleeper 195 ms late.
    The thread's CPU time since the batch before started holds the 100 ms, all of it
    from before the sleeper slept: the bound counts only what came after."""
    monitor = LoopLag(interval_s=0.005)
    monitor._previous = (0.0, 0.0)  # the batch before: started at t=0, CPU time 0
    monitor._batch = (0.300, 0.101)  # this batch: t=0.3, after 101 ms of CPU time
    ran = monitor._ran_since(due=0.105, cpu=0.1012, asleep_cpu=0.100)
    assert ran is not None and ran < 0.002  # the blocked 195 ms were not the loop's CPU
    # and all of it when it came after: the sleeper slept before the 100 ms
    ran = monitor._ran_since(due=0.005, cpu=0.1012, asleep_cpu=0.0)
    assert ran is not None and 0.1 <= ran < 0.102
    # no batch seen since the sleeper slept (the instrument just added): unknown
    monitor._batch = monitor._previous = (-math.inf, -math.inf)
    assert monitor._ran_since(due=0.105, cpu=0.1012, asleep_cpu=0.100) is None
