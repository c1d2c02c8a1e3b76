"""Event-loop lag: how late a periodic sleeper wakes, the server's first health signal.

A task sleeps ``interval_s`` again and again and records how late each wake-up was.
On a healthy loop that is well under a millisecond; anything that holds the loop
(a burst handled without a checkpoint, a big snapshot built in one go) shows up as
lag here before it shows up anywhere else: every timer, accept, heartbeat and tick
is late by the same amount.

Readings:

* :class:`LagWindow`: fixed buckets plus an exact maximum. The monitor keeps one for
  its whole life (``total``, exported as ``gateway_event_loop_lag_seconds``) and
  tests and benchmarks open their own (:meth:`LoopLag.window`) around a scenario.
* :meth:`LoopLag.recent_max`: the exact maximum over the last minute
  (``gateway_event_loop_lag_max_seconds``), for alerts and for processes read
  only through ``/metrics``.
* ``running`` (``gateway_event_loop_lag_running_seconds``, and its last minute's
  maximum): each wake-up's lateness counting only what the loop's thread can have
  spent on the CPU, ``min(lag, an upper bound of the thread's CPU time from the due
  time to the wake-up)``; the bound is read at the start of each scheduler batch and
  counts all of the batch before the wake-up's CPU time since the sleeper went to
  sleep, some of which may have come before the due time. Between a timer's due time
  and its wake-up the loop is not idle (but for the up to 1 ms by which epoll rounds
  its timeout up): its thread runs, or waits for a CPU, or is blocked. So the loop
  thread's CPU time made the wake-up late by at most this, and the thread was not
  running for at least ``lag - running``. Not running covers the machine's stalls
  (the host running other machines: CPU steal, where the kernel has a steal clock;
  other processes; kernel threads) and also some of the gateway's own: waiting for
  the GIL while one of its worker threads holds it (a checkpoint's encoding, a
  restore's parse), a CPU quota it has used up (a container's limit), its sibling
  processes under ``--workers``, kernel work done for it in kernel threads, and
  blocking calls (its log lines; a page fault that waits for I/O). And what the
  kernel counts as the thread's CPU time depends on its configuration: without
  ``CONFIG_IRQ_TIME_ACCOUNTING`` interrupts taken while the thread runs count as its
  own. So a spike whose running part is small was not the loop's own computing, which
  is what this tells; whether it was the machine's, the rest of the process's vital
  signs (its threads' CPU, throttling) and the machine's say. The budget stays on the
  lag itself.
* :func:`from_metrics`: a :class:`LagWindow` rebuilt from a ``/metrics`` text;
  ``later.minus(earlier)`` is the window between two scrapes.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["BUCKETS", "LagWindow", "LoopLag", "from_metrics"]

#: upper bounds (seconds) of the histogram buckets; the budget is p99 <= 10 ms and
#: max <= 100 ms, so the buckets are fine around those two figures
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_RECENT_S = 60  # recent_max() covers this many whole seconds


class LagWindow:
    """Lag samples: a count per bucket (the last one unbounded), their sum, the max."""

    __slots__ = ("counts", "max", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.max = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, lag: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.sum += lag
        if lag > self.max:
            self.max = lag

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (0 with no samples;
        ``inf`` if it lies beyond the last bucket)."""
        total = self.count
        if not total:
            return 0.0
        rank = math.ceil(q * total)
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return BUCKETS[i] if i < len(BUCKETS) else math.inf
        return math.inf  # unreachable

    def max_bound(self) -> float:
        """Upper bound of the highest bucket with a sample (for windows rebuilt from
        /metrics, whose exact maximum is not known)."""
        for i in range(len(self.counts) - 1, -1, -1):
            if self.counts[i]:
                return BUCKETS[i] if i < len(BUCKETS) else math.inf
        return 0.0

    def minus(self, earlier: LagWindow) -> LagWindow:
        """The samples taken between ``earlier`` and this reading of one histogram."""
        out = LagWindow()
        out.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        out.sum = self.sum - earlier.sum
        out.max = self.max if out.count else 0.0
        return out

    def summary(self) -> dict[str, float]:
        """p50/p99/max in milliseconds and the sample count, for reports."""
        peak = self.max if self.max else self.max_bound()
        return {
            "samples": self.count,
            "p50_ms": round(self.quantile(0.50) * 1000, 3),
            "p99_ms": round(self.quantile(0.99) * 1000, 3),
            "max_ms": round(peak * 1000, 3),
        }

    def __repr__(self) -> str:
        return f"LagWindow({self.summary()})"


class LoopLag(trio.abc.Instrument):
    """The sleeper. Start it with ``await nursery.start(monitor.run)``; while it runs
    it is also an instrument of the loop (one hook a scheduler batch: the batch's start
    time and the thread's CPU time then, for the running part of each lag; ~0.6 µs a
    batch here, the CPU-time clock being a system call)."""

    def __init__(self, interval_s: float = 0.01) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.total = LagWindow()
        #: the lateness the loop's thread can have spent on the CPU (module docstring)
        self.running = LagWindow()
        self._windows: set[LagWindow] = set()
        self._running_windows: set[LagWindow] = set()
        self._recent = _RecentMax()
        self._recent_running = _RecentMax()
        # (loop time, thread CPU time) at the start of this batch and of the one before
        self._batch = self._previous = (-math.inf, -math.inf)

    def after_io_wait(self, timeout: float) -> None:
        self._previous = self._batch
        self._batch = (trio.current_time(), time.thread_time())

    @contextmanager
    def window(self, *, running: bool = False) -> Iterator[LagWindow]:
        """Collect the samples taken while the ``with`` block runs (with ``running``:
        their running parts)."""
        w = LagWindow()
        windows = self._running_windows if running else self._windows
        windows.add(w)
        try:
            yield w
        finally:
            windows.discard(w)

    def observe(self, lag: float, now: float, ran: float | None = None) -> None:
        """One wake-up ``lag`` late at ``now``; ``ran``: what the loop's thread can have
        run of it (None: unknown, all of the lag counts as running)."""
        self.total.observe(lag)
        for w in self._windows:
            w.observe(lag)
        self._recent.observe(lag, now)
        part = lag if ran is None else min(lag, max(0.0, ran))
        self.running.observe(part)
        for w in self._running_windows:
            w.observe(part)
        self._recent_running.observe(part, now)

    def recent_max(self, now: float, *, running: bool = False) -> float:
        """The largest lag (with ``running``: running part) seen in the last minute."""
        return (self._recent_running if running else self._recent).max(now)

    def _ran_since(self, due: float, cpu: float, asleep_cpu: float) -> float | None:
        """An upper bound of the thread's CPU time from ``due`` to now (None: not
        known yet): all of it since this batch started (the one whose deadline check
        woke the sleeper), and of the batch before (which started before ``due``) its
        CPU time since the sleeper went to sleep (``asleep_cpu``), but no more than the
        time from ``due`` to this batch's start."""
        (started, at_start), (_, at_previous) = self._batch, self._previous
        if at_start < asleep_cpu:
            return None  # the instrument was added after this batch started
        before = at_start - max(at_previous, asleep_cpu)
        return cpu - at_start + min(max(0.0, started - due), max(0.0, before))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # this thread's clock readings only (a monitor may run again, in another run)
        self._batch = self._previous = (-math.inf, -math.inf)
        trio.lowlevel.add_instrument(self)
        try:
            task_status.started()
            interval = self.interval_s
            while True:
                due, asleep_cpu = trio.current_time() + interval, time.thread_time()
                await trio.sleep_until(due)
                now, cpu = trio.current_time(), time.thread_time()
                self.observe(max(0.0, now - due), now, self._ran_since(due, cpu, asleep_cpu))
        finally:
            trio.lowlevel.remove_instrument(self)


class _RecentMax:
    """The largest value per whole second, over the last ``_RECENT_S`` seconds."""

    __slots__ = ("_at", "_max")

    def __init__(self) -> None:
        self._max = [0.0] * _RECENT_S  # ring indexed by second
        self._at = [-1] * _RECENT_S

    def observe(self, value: float, now: float) -> None:
        second = int(now)
        slot = second % _RECENT_S
        if self._at[slot] != second:
            self._at[slot] = second
            self._max[slot] = 0.0
        if value > self._max[slot]:
            self._max[slot] = value

    def max(self, now: float) -> float:
        floor = int(now) - _RECENT_S
        return max(
            (v for v, at in zip(self._max, self._at, strict=True) if at > floor), default=0.0
        )


def from_metrics(text: str, name: str = "gateway_event_loop_lag_seconds") -> LagWindow:
    """A lag histogram (``name``: ``gateway_event_loop_lag_seconds`` or
    ``gateway_event_loop_lag_running_seconds``) from a /metrics exposition, as a window
    (cumulative since the gateway started; subtract an earlier reading)."""
    cumulative: dict[float, float] = {}
    out = LagWindow()
    sample = re.compile(
        rf'^{re.escape(name)}_(bucket\{{le="([^"]+)"\}}|sum|count)\s+(\S+)', re.MULTILINE
    )
    for m in sample.finditer(text):
        kind, le, value = m.group(1), m.group(2), float(m.group(3))
        if le is not None:
            cumulative[float(le)] = value
        elif kind == "sum":
            out.sum = value
    if not cumulative:
        raise ValueError(f"no {name} in this /metrics text")
    previous = 0.0
    for i, bound in enumerate([*BUCKETS, math.inf]):
        c = cumulative.get(bound, previous)
        out.counts[i] = round(c - previous)
        previous = c
    return out
