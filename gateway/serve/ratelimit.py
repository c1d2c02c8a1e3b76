"""The budget of client messages on one connection: a token bucket with one warning.

Rules (docs/protocol.md, "Message rate"): ``rate`` messages per second on average,
bursts of up to ``burst``. The first message over the budget is dropped with a
warning (``WARN``); another before the bucket has filled up again closes the
connection (``CLOSE``)."""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["MessageBudget"]

OK: Final = "ok"
WARN: Final = "warn"
CLOSE: Final = "close"


class MessageBudget:
    __slots__ = ("_at", "_tokens", "_warned", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = self.burst
        self._at = now
        self._warned = False

    def take(self, now: float) -> Literal["ok", "warn", "close"]:
        """One message arrives at ``now``: whether it may pass."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= self.burst:
            self._warned = False  # it slowed down
        if self._tokens >= 1:
            self._tokens -= 1
            return OK
        if self._warned:
            return CLOSE
        self._warned = True
        return WARN
