"""A stream's lifecycle: its states, the transitions allowed, and the one move between them.

Rules (every stream, WebSocket or SSE; :class:`~.session.StreamSession` enforces them):

* ``ADMITTED``: it passed admission and is in the fan-out's registry, so shutdown sees
  it; nothing of the stream protocol has been written (the 101 response or nothing).
* ``OPEN``: the opener went out (``welcome``; on SSE the HTTP head, then ``welcome``).
  Only an open stream is pumped, sends control messages, or has timers.
* ``CLOSING``: a close was decided. Its close frame (SSE: ``close`` event) is written
  once: at once if the stream was open, else by ``run`` as the first thing after the
  101 or the HTTP head, never a ``welcome`` before or after it. Then the stream waits
  at most ``close_timeout_s`` for it to go out (and, on WebSocket, for the answer).
* ``DROPPED``: the peer cannot take anything more (it left, stopped answering, a write
  failed): nothing more is written, nothing is waited for.
* ``DONE``: torn down and out of the registry; no task may start.

Every move goes through :meth:`Lifecycle.to`; any other move raises
:class:`LifecycleError` (a bug, never a client's doing). The first move that gives a
disconnect reason fixes it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = ["ADMITTED", "CLOSING", "DONE", "DROPPED", "OPEN", "Lifecycle", "LifecycleError", "State"]


class State(enum.Enum):
    ADMITTED = "admitted"
    OPEN = "open"
    CLOSING = "closing"
    DROPPED = "dropped"
    DONE = "done"


ADMITTED, OPEN, CLOSING, DROPPED, DONE = State

#: the moves allowed from each state
TRANSITIONS: Final[Mapping[State, frozenset[State]]] = {
    ADMITTED: frozenset({OPEN, CLOSING, DROPPED, DONE}),
    OPEN: frozenset({CLOSING, DROPPED, DONE}),
    CLOSING: frozenset({DROPPED, DONE}),
    DROPPED: frozenset({DONE}),
    DONE: frozenset(),
}


class LifecycleError(RuntimeError):
    """A move the lifecycle does not allow."""


class Lifecycle:
    __slots__ = ("reason", "state")

    def __init__(self) -> None:
        self.state = ADMITTED
        self.reason: str | None = None  # the disconnect reason, once known

    def to(self, new: State, reason: str | None = None) -> None:
        if new not in TRANSITIONS[self.state]:
            raise LifecycleError(f"a stream cannot go from {self.state.name} to {new.name}")
        self.state = new
        self.note(reason)

    def note(self, reason: str | None) -> None:
        """Record the disconnect reason, unless one is known already."""
        if self.reason is None:
            self.reason = reason

    @property
    def open(self) -> bool:
        return self.state is OPEN

    @property
    def ending(self) -> bool:
        """Closing, dropped or done: no new frames, no timers."""
        return self.state is not OPEN and self.state is not ADMITTED
