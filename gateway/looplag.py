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
* :func:`from_metrics`: a :class:`LagWindow` rebuilt from a ``/metrics`` text;
  ``later.minus(earlier)`` is the window between two scrapes.
"""

from __future__ import annotations

import bisect
import math
import re
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


class LoopLag:
    """The sleeper. Start it with ``await nursery.start(monitor.run)``."""

    def __init__(self, interval_s: float = 0.01) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.total = LagWindow()
        self._windows: set[LagWindow] = set()
        self._recent = [0.0] * _RECENT_S  # max per whole second, ring indexed by second
        self._recent_at = [-1] * _RECENT_S

    @contextmanager
    def window(self) -> Iterator[LagWindow]:
        """Collect the samples taken while the ``with`` block runs."""
        w = LagWindow()
        self._windows.add(w)
        try:
            yield w
        finally:
            self._windows.discard(w)

    def observe(self, lag: float, now: float) -> None:
        self.total.observe(lag)
        for w in self._windows:
            w.observe(lag)
        second = int(now)
        slot = second % _RECENT_S
        if self._recent_at[slot] != second:
            self._recent_at[slot] = second
            self._recent[slot] = 0.0
        if lag > self._recent[slot]:
            self._recent[slot] = lag

    def recent_max(self, now: float) -> float:
        """The largest lag seen in the last minute."""
        floor = int(now) - _RECENT_S
        return max(
            (v for v, at in zip(self._recent, self._recent_at, strict=True) if at > floor),
            default=0.0,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self.interval_s
        while True:
            due = trio.current_time() + interval
            await trio.sleep_until(due)
            now = trio.current_time()
            self.observe(max(0.0, now - due), now)


_SAMPLE = re.compile(
    r'^gateway_event_loop_lag_seconds_(bucket\{le="([^"]+)"\}|sum|count)\s+(\S+)', re.MULTILINE
)


def from_metrics(text: str) -> LagWindow:
    """``gateway_event_loop_lag_seconds`` from a /metrics exposition, as a window
    (cumulative since the gateway started; subtract an earlier reading)."""
    cumulative: dict[float, float] = {}
    out = LagWindow()
    for m in _SAMPLE.finditer(text):
        kind, le, value = m.group(1), m.group(2), float(m.group(3))
        if le is not None:
            cumulative[float(le)] = value
        elif kind == "sum":
            out.sum = value
    if not cumulative:
        raise ValueError("no gateway_event_loop_lag_seconds in this /metrics text")
    previous = 0.0
    for i, bound in enumerate([*BUCKETS, math.inf]):
        c = cumulative.get(bound, previous)
        out.counts[i] = round(c - previous)
        previous = c
    return out
