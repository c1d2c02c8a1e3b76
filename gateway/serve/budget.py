"""The bytes a connection may make the gateway hold for a peer that does not read.

Rules:
* State frames are taken from the hub only while nothing is queued (ws.py, sse.py),
  so they never pile up; what can pile up is what the gateway writes in answer to
  the peer (acks, errors, pongs) and the rest of a plain-HTTP response.
* Answers are counted from the moment the queue was last empty: a peer that reads
  never comes near the budget, one that does not is over it after
  ``max_pending_bytes`` of answers, whatever else is queued (a join snapshot).
* Plain-HTTP bodies held by all connections together are capped by
  :class:`HttpBodies` (a response that would go over is refused with 503).
"""

from __future__ import annotations

from .sockio import Outbound

__all__ = ["AnswerBudget", "HttpBodies"]


class AnswerBudget:
    """Bytes of answers queued since the connection's queue was last empty."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def admit(self, out: Outbound, size: int) -> bool:
        """Count ``size`` more bytes of answer; False when over the budget."""
        if out.idle:
            self.held = 0
        self.held += size
        return self.held <= self.limit


class HttpBodies:
    """Bytes of plain-HTTP response bodies held, all connections together."""

    __slots__ = ("held", "limit", "peak")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0

    @property
    def full(self) -> bool:
        return self.held >= self.limit

    def reserve(self, size: int) -> bool:
        if self.held and self.held + size > self.limit:
            return False  # one response alone may be larger than the budget
        self.held += size
        self.peak = max(self.peak, self.held)
        return True

    def release(self, size: int) -> None:
        self.held -= size
