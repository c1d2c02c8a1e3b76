"""The gateway's two clocks, both read through Trio so tests can mock them.

``mono()`` is Trio's clock (``trio.current_time()``: monotonic, and the
``MockClock`` in tests). ``wall()`` is Unix time for data timestamps, derived from
the wall clock once at start plus Trio's elapsed time: it never jumps when NTP
adjusts the system clock, and it advances with a ``MockClock`` too.
"""

from __future__ import annotations

import time

import trio


class Clock:
    def __init__(self) -> None:
        self._mono0 = trio.current_time()
        self._wall0 = time.time()

    def mono(self) -> float:
        return trio.current_time()

    def wall(self) -> float:
        return self._wall0 + (trio.current_time() - self._mono0)
