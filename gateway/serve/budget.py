"""The bytes a connection may make the gateway hold for a peer that does not read.

Rules:
* State frames are taken from the hub only while nothing is queued (ws.py, sse.py),
  so they never pile up; what can pile up is what the gateway writes in answer to
  the peer (acks, errors, pongs) and the rest of a plain-HTTP response.
* An answer counts its bytes plus :data:`ANSWER_OVERHEAD` (the frame header, the
  bytes object and its queue slot), so the budget is what the queue really holds,
  also for the smallest answers.
* Answers are counted from the moment the queue was last empty: a peer that reads
  never comes near the budget, one that does not is over it after
  ``max_pending_bytes`` of answers, whatever else is queued (a join snapshot).
* Plain-HTTP bodies held by all connections together are capped by
  :class:`HttpBodies` (a response that would go over is refused with 503).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from ..config import ServerConfig
from .ratelimit import MessageBudget
from .sockio import Outbound

__all__ = ["ANSWER_OVERHEAD", "AnswerBudget", "HttpBodies", "PeerLimits"]

#: heap bytes a queued answer costs beyond its payload (measured: 2 of frame header,
#: 33 of bytes object, 8 of list slot, rounded up to pymalloc's 16-byte classes)
ANSWER_OVERHEAD = 64


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


class PeerLimits:
    """What one WebSocket peer may make the gateway do and hold: messages and control
    frames under one token bucket (``messages_per_s``, burst ``message_burst``), its
    unread answers (:class:`AnswerBudget`), and one pending Pong, for the latest Ping
    (RFC 6455 5.5.3 allows answering only that one)."""

    __slots__ = ("answers", "messages", "pong", "rejected")

    def __init__(self, cfg: ServerConfig, now: float, rejected: Counter[str]) -> None:
        self.messages = MessageBudget(cfg.messages_per_s, cfg.message_burst, now)
        self.answers = AnswerBudget(cfg.max_pending_bytes)
        self.pong: bytes | None = None
        self.rejected = rejected  # counted by reason: "rate", "pending_bytes"

    def take(self, now: float) -> Literal["ok", "warn", "close"]:
        """One message or control frame: whether it may pass (ratelimit.py); a refusal
        is counted."""
        verdict = self.messages.take(now)
        if verdict != "ok":
            self.rejected["rate"] += 1
        return verdict

    def admit_answer(self, out: Outbound, size: int) -> bool:
        """An answer of ``size`` bytes; False (counted) when over the budget."""
        if self.answers.admit(out, size):
            return True
        self.rejected["pending_bytes"] += 1
        return False
