"""What ``gateway run`` is doing, at a glance: a status line, and a summary at exit.

Rules:

* On a terminal (stderr is a TTY) one line, rewritten in place every second; log
  records are written above it (the line is cleared, the record written, the line
  drawn again: :class:`StatusLogHandler`). Elsewhere (a service, a pipe, a file) the
  same figures go to the log as one INFO line every ``interval_s`` (60 s by default).
* The figures: devices (topics with presence, online of total), topics, screens (open
  WebSocket and SSE sessions), device messages accepted per second over the last
  interval, and the data age (since the newest message from any device).
* Work per refresh is bounded: the topics are walked in slices of :data:`SLICE`
  with a checkpoint between slices, without copying them, so a million topics never
  stall the event loop (about 1 ms per slice).
"""

from __future__ import annotations

import itertools
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import trio

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["Figures", "StatusLogHandler", "StatusReporter", "count", "format_line"]

log = logging.getLogger("gateway.status")
SLICE = 5_000


@dataclass(frozen=True, slots=True)
class Figures:
    devices: int  # topics whose device reported presence
    online: int
    topics: int
    screens: int
    msgs: int  # device messages accepted so far
    newest: float | None  # wall time of the newest device message, None before any


async def count(gw: Gateway, previous: Figures | None = None) -> Figures:
    """The current figures; walks the topics in slices (see the module rules). Topics
    added during the walk end it early: the device figures are then ``previous``'s."""
    store = gw.store
    devices = online = 0
    newest = 0.0
    states = iter(store.states())  # no copy: a million topics would stall the loop
    try:
        while True:
            batch = list(itertools.islice(states, SLICE))
            for st in batch:
                if st.online is not None:
                    devices += 1
                    online += st.online
                if st.seen_at > newest:
                    newest = st.seen_at
            if len(batch) < SLICE:
                break
            await trio.lowlevel.checkpoint()
    except RuntimeError:  # "dictionary changed size during iteration"
        if previous is not None:
            devices, online = previous.devices, previous.online
            newest = max(newest, previous.newest or 0.0)
    return Figures(
        devices,
        online,
        len(store),
        gw.screens()[0],
        store.stats.messages,
        newest if newest > 0 else None,
    )


def format_line(f: Figures, rate: float, now: float) -> str:
    age = "no data yet" if f.newest is None else f"data age {max(0.0, now - f.newest):.1f} s"
    return (
        f"devices {f.online}/{f.devices} online | topics {f.topics:,} | screens {f.screens} | "
        f"{rate:,.0f} msg/s | {age}"
    )


class StatusLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that keeps a status line at the bottom of a terminal."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.line = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self.line:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        if self.line:
            self.stream.write(self.line)
            self.stream.flush()

    def show(self, line: str) -> None:
        self.line = line
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def finish(self) -> None:
        if self.line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.line = ""


class StatusReporter:
    def __init__(self, handler: StatusLogHandler | None, interval_s: float) -> None:
        """``handler``: the terminal's (a live line), or None (periodic log lines)."""
        self.handler = handler
        self.interval_s = interval_s
        self.started_wall = 0.0
        self.started_mono = 0.0
        self.first_msgs = 0
        self.peak_screens = 0

    async def run(self, gw: Gateway) -> None:
        self.started_wall = gw.clock.wall()
        self.started_mono = gw.clock.mono()
        self.first_msgs = gw.store.stats.messages
        last_t, last_msgs = self.started_mono, self.first_msgs
        f: Figures | None = None
        while True:
            await trio.sleep(self.interval_s)
            f = await count(gw, f)
            self.peak_screens = max(self.peak_screens, f.screens)
            now = gw.clock.mono()
            rate = (f.msgs - last_msgs) / max(now - last_t, 1e-9)
            last_t, last_msgs = now, f.msgs
            line = format_line(f, rate, gw.clock.wall())
            if self.handler is not None:
                self.handler.show(line)
            else:
                log.info("%s", line)

    async def summary(self, gw: Gateway) -> str:
        if self.handler is not None:
            self.handler.finish()
        f = await count(gw)
        up = gw.clock.mono() - self.started_mono
        msgs = f.msgs - self.first_msgs
        return (
            f"ran {_duration(up)}: {msgs:,} device messages ({msgs / max(up, 1e-9):,.0f}/s), "
            f"{f.topics:,} topics, {f.online}/{f.devices} devices online at exit, "
            f"{max(self.peak_screens, f.screens, gw.screens()[1])} screens at most"
        )


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def terminal() -> bool:
    return sys.stderr.isatty()
