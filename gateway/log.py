"""Logging with a rate limit per kind of event, so bad input cannot flood the log.

``limited(kind, ...)`` logs at most ``burst`` lines per ``per_s`` seconds for each
kind and then one summary line of how many were suppressed. Callers never pass
tokens or message bodies (tests grep the logs for both).
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, per_s: float = 10.0, burst: int = 5) -> None:
        self.logger = logger
        self.per_s = per_s
        self.burst = burst
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind -> (start, logged, dropped)

    def limited(self, kind: str, msg: str, *args: Any, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        start, logged, dropped = self._windows.get(kind, (now, 0, 0))
        if now - start >= self.per_s:
            if dropped:
                self.logger.log(level, "%s: %d similar messages suppressed", kind, dropped)
            start, logged, dropped = now, 0, 0
        if logged < self.burst:
            self.logger.log(level, msg, *args)
            logged += 1
        else:
            dropped += 1
        self._windows[kind] = (start, logged, dropped)
