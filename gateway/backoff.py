"""Reconnect backoff, for the MQTT ingest and the simulator's broker connections.

Two rules each of those loops once had wrong on its own:

* the count starts afresh only after a connection that stayed up ``stable_s``, counted
  from when it came up (:meth:`Backoff.up`, at the CONNACK), never from when the
  attempt began: an attempt that waited out its whole connect timeout is a failure
  however long it took, and a broker that drops each connection at once (an ACL, a
  client id in use) gets backed-off attempts, not one a second;
* the doubling is clamped (:func:`capped_doubling`): ``base * 2**n`` overflows a float
  at n = 1,024, which a broker down overnight reaches (an ``OverflowError`` out of the
  reconnect loop would have ended the gateway).
"""

from __future__ import annotations

import random

import trio

__all__ = ["Backoff", "capped_doubling"]

#: 2**64 times any base of a millisecond or more exceeds any cap worth configuring
_MAX_DOUBLINGS = 64


def capped_doubling(base: float, cap: float, n: int) -> float:
    """``min(cap, base * 2**n)`` for any ``n`` >= 0, without overflow."""
    return min(cap, base * 2.0 ** min(n, _MAX_DOUBLINGS))


class Backoff:
    """The wait after the n-th failure in a row: ``random(low, min(high, low * 2**n))``
    (jittered from the first, so that connections lost together come back spread out).
    Call :meth:`up` when a connection is established and :meth:`next_delay` after every
    failed attempt or lost connection."""

    def __init__(
        self, low: float, high: float, stable_s: float, rng: random.Random | None = None
    ) -> None:
        self.low = low
        self.high = high
        self.stable_s = stable_s
        self.rng = rng or random.Random()
        self.failures = 0  # in a row, since the last connection that stayed up stable_s
        self._up_at: float | None = None

    def up(self) -> None:
        """A connection is established (trio time)."""
        self._up_at = trio.current_time()

    def next_delay(self) -> float:
        """After a failed attempt or a lost connection: the wait before the next one."""
        if self._up_at is not None and trio.current_time() - self._up_at >= self.stable_s:
            self.failures = 0
        self._up_at = None
        self.failures += 1
        return self.rng.uniform(self.low, capped_doubling(self.low, self.high, self.failures))
