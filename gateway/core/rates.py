"""Subscription rates: the steps a requested rate snaps to.

Every (filter, rate) pair the screens ask for is one stream in the hub, so free-form
rates would give every screen its own stream. Rates therefore snap to a short,
documented ladder of steps:

* ``tick_hz`` itself, and every rate of the 1-2-5 series (..., 0.1, 0.2, 0.5, 1, 2,
  5, 10, 20, ...) between ``min_rate_hz`` and ``tick_hz`` whose period is a whole
  number of hub ticks (with ``tick_hz = 20``: 20, 10, 5, 2, 1, 0.5, 0.2, 0.1 Hz).
* A requested rate snaps *down* to the largest step not above it (a screen never
  gets more updates than it asked for, and never fewer than half).
* A rate below ``min_rate_hz``, or not a finite number, is refused
  (:class:`RateError`), never rounded: ``5e-324`` is a client bug, and the
  arithmetic on it must not reach the hub. A finite rate above ``tick_hz`` is
  granted ``tick_hz``, the fastest step (as protocol v1 has always promised: the
  ack names the granted rate).
"""

from __future__ import annotations

import math

__all__ = ["RateError", "RateSteps"]


class RateError(ValueError):
    """A rate outside the allowed range; ``str(err)`` says which."""


class RateSteps:
    __slots__ = ("max_hz", "min_hz", "steps", "tick_hz")

    def __init__(self, tick_hz: float, min_rate_hz: float) -> None:
        if not (math.isfinite(tick_hz) and tick_hz > 0):
            raise ValueError("tick_hz must be a finite number > 0")
        if not (math.isfinite(min_rate_hz) and 0 < min_rate_hz <= tick_hz):
            raise ValueError("min_rate_hz must be a finite number in (0, tick_hz]")
        self.tick_hz = tick_hz
        candidates = {tick_hz}
        for exp in range(-4, 7):
            for mant in (1, 2, 5):
                rate = mant * 10.0**exp
                if min_rate_hz * (1 - 1e-9) <= rate < tick_hz:
                    every = tick_hz / rate
                    if abs(every - round(every)) < 1e-9 * every:
                        candidates.add(rate)
        #: the allowed rates, fastest first
        self.steps: tuple[float, ...] = tuple(sorted(candidates, reverse=True))
        self.max_hz = tick_hz
        self.min_hz = self.steps[-1]

    def every(self, rate_hz: float) -> int:
        """Hub ticks between two ticks of a stream at the (allowed) ``rate_hz``."""
        return max(1, round(self.tick_hz / rate_hz))

    def snap(self, rate_hz: object) -> float:
        """The step a requested rate gets, or :class:`RateError`."""
        if type(rate_hz) not in (int, float) or not math.isfinite(rate_hz):  # type: ignore[arg-type]
            raise RateError("'rate_hz' must be a finite number")
        rate = float(rate_hz)  # type: ignore[arg-type]
        if not rate >= self.min_hz * (1 - 1e-9):
            raise RateError(f"'rate_hz' must be at least {self.min_hz:g} Hz")
        for step in self.steps:
            if step <= rate * (1 + 1e-9):
                return step
        return self.steps[-1]  # unreachable: rate >= min_hz, the last step
