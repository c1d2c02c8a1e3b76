"""The serving side's counters, read by the metrics collector at scrape time."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

__all__ = ["ServerStats"]


@dataclass
class ServerStats:
    """Counters the metrics collector reads at scrape time."""

    connections_opened: int = 0
    peak_connections: int = 0  # the most streams open at once (the exit summary)
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)
    send_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    handshake_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    auth_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    inbound_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    http_requests: collections.Counter[str] = field(default_factory=collections.Counter)
    #: plain-HTTP responses not written whole, by reason (metrics.HTTP_CUT_REASONS)
    http_cut: collections.Counter[str] = field(default_factory=collections.Counter)
    frames_sent: int = 0
    bytes_sent: int = 0
    internal_errors: int = 0  # connection handlers that failed (a bug: see the log)
    ticks: int = 0

    def send_failure(self, reason: str) -> None:
        self.send_failures[reason] += 1
