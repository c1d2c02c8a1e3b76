"""The wall registry: which walls there are, what they show, and how they fare.

A wall is a dashboard screen that names itself in ``report`` messages
(docs/protocol.md, "Wall reports"). The registry keeps one entry per wall name,
judges its state from its last report and the gateway's own position, and remembers
the remote actions sent to it and their acknowledgements (docs/operations.md,
"Walls").

Rules:
* Sans-io: every method takes ``now`` (the gateway's wall-clock seconds, the same
  clock as the ``rx`` of state messages). Connections are opaque hashable objects.
* Bounded: at most ``max_walls`` entries; a new name when full replaces the wall that
  has been gone longest, or is refused (counted) when none is gone. At most
  :data:`MAX_ACTIONS` actions are remembered per wall.
* One connection owns one name; the newest connection reporting a name owns it (a
  reloaded wall's new page may report before its old page is gone). Only the owner's
  end makes the wall ``gone``; a gone wall is forgotten ``gone_keep_s`` later.
* States, worst first (:data:`STATES`), the first rule that holds wins:
  ``gone`` (its connection ended), ``hidden`` (its last report says the page is not
  visible: a browser throttles a hidden page's frames and timers, nothing else can be
  judged), ``stale`` (it holds another epoch than the gateway's, or its newest data
  is older than ``stale_s`` as it sees it), ``lagging`` (behind the gateway by more
  than ``lag_s``, fewer than ``min_fps`` frames per second, a frame slower than
  ``slow_frame_ms``, or no report for ``silent_s``), else ``healthy``.
* How far behind: the wall reports the last state message it applied (topic, seq,
  rx). When the gateway holds a later seq of that topic, the wall is behind by the
  changes in between and by the time between that change and the gateway's latest
  change of the topic; else it is current (0).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .protocol import ActionAck, Report

__all__ = [
    "ACTIONS",
    "MAX_ACTIONS",
    "STATES",
    "Wall",
    "WallAction",
    "WallError",
    "Walls",
    "WallsConfig",
]

#: worst first: the order of /api/walls and of the metrics' ``state`` label
STATES: Final = ("gone", "stale", "lagging", "hidden", "healthy")
_RANK: Final = {s: i for i, s in enumerate(STATES)}
ACTIONS: Final = ("reload", "page", "banner")
MAX_ACTIONS: Final = 8  # remembered per wall, newest last
MAX_BANNER_CHARS: Final = 500
MAX_PAGE_CHARS: Final = 128


@dataclass(frozen=True)
class WallsConfig:
    """``[walls]``: the registry's bounds and the thresholds of the states."""

    max_walls: int = 2000
    report_s: float = 30.0  # the walls' report interval (welcome.limits.wall_report_s)
    min_report_s: float = 2.0  # a report sooner than this on a connection is refused
    gone_keep_s: float = 600.0  # a gone wall stays listed this long
    silent_s: float = 75.0  # no report this long (2.5 intervals): lagging
    lag_s: float = 5.0
    stale_s: float = 60.0
    min_fps: float = 5.0
    slow_frame_ms: float = 1000.0
    action_timeout_s: float = 30.0  # an action not acknowledged by then: "no answer"
    #: identities (token names, JWT subjects) that may send actions; anyone when the
    #: gateway's auth mode is "none" (loopback development)
    operators: tuple[str, ...] = ()
    #: walls exported with their own ``wall`` label (0: none); the worst first
    metrics_per_wall: int = 0

    def __post_init__(self) -> None:
        for name in ("report_s", "min_report_s", "gone_keep_s", "silent_s", "lag_s", "stale_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a number > 0")
        if self.min_report_s > self.report_s:
            raise ValueError("min_report_s: must be at most report_s")
        if not 1 <= self.max_walls <= 100_000:
            raise ValueError("max_walls: must be 1 to 100000")
        if not 0 <= self.metrics_per_wall <= 1000:
            raise ValueError("metrics_per_wall: must be 0 to 1000")
        if not (self.min_fps >= 0 and self.slow_frame_ms > 0 and self.action_timeout_s > 0):
            raise ValueError("min_fps, slow_frame_ms, action_timeout_s: must be >= 0, > 0, > 0")


class WallError(Exception):
    """A refused report or action: ``code`` is a protocol error code or an HTTP-ish
    reason (``unknown_wall``, ``wall_gone``, ``bad_action``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class WallAction:
    id: str
    action: str
    params: dict[str, Any]
    by: str
    sent_at: float
    acked_at: float | None = None
    ok: bool | None = None
    detail: str = ""

    def status(self, now: float, timeout: float) -> str:
        if self.acked_at is not None:
            return "done" if self.ok else "failed"
        return "no answer" if now - self.sent_at > timeout else "sent"

    def doc(self, now: float, timeout: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            **self.params,
            "by": self.by,
            "sent_at": self.sent_at,
            "status": self.status(now, timeout),
            "acked_at": self.acked_at,
            "detail": self.detail,
        }


@dataclass(slots=True)
class Wall:
    name: str
    first_seen: float
    conn: Hashable | None = None
    address: str = ""
    report: Report | None = None
    heard_at: float = 0.0
    reported_at: float | None = None  # the owner's last report (not its stream's opening)
    gone_at: float | None = None
    behind_seq: int = 0
    behind_s: float = 0.0
    connects: int = 0  # connections that reported this name
    actions: deque[WallAction] = field(default_factory=lambda: deque(maxlen=MAX_ACTIONS))

    def judge(self, now: float, cfg: WallsConfig, epoch: str) -> tuple[str, str]:
        """(state, why) by the module's rules."""
        r = self.report
        if self.gone_at is not None or r is None:
            return "gone", "disconnected"
        if not r.visible:
            return "hidden", "the page is not visible"
        if r.epoch is not None and r.epoch != epoch:
            return "stale", "holds another epoch than the gateway's"
        if r.data_age_s is not None and r.data_age_s > cfg.stale_s:
            return "stale", f"newest data {r.data_age_s:.0f} s old"
        if now - self.heard_at > cfg.silent_s:
            return "lagging", f"no report for {now - self.heard_at:.0f} s"
        if self.behind_s > cfg.lag_s:
            return "lagging", f"{self.behind_s:.1f} s behind the gateway"
        if r.fps is not None and r.fps < cfg.min_fps:
            return "lagging", f"{r.fps:.1f} frames per second"
        if r.slowest_frame_ms is not None and r.slowest_frame_ms > cfg.slow_frame_ms:
            return "lagging", f"a frame took {r.slowest_frame_ms:.0f} ms"
        return "healthy", ""


@dataclass
class WallStats:
    reports: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # too_soon, full
    actions: Counter[str] = field(default_factory=Counter)  # by action
    acks: Counter[str] = field(default_factory=Counter)  # ok, failed, unknown


class Walls:
    """The registry. ``position(topic)`` is the gateway's (seq, changed_at) of a topic,
    or None; ``epoch()`` the gateway's epoch."""

    def __init__(
        self,
        cfg: WallsConfig,
        epoch: Callable[[], str],
        position: Callable[[str], tuple[int, float] | None],
    ) -> None:
        self.cfg = cfg
        self.epoch = epoch
        self.position = position
        self._walls: dict[str, Wall] = {}
        self._by_conn: dict[Hashable, str] = {}
        self._next_id = 0
        self._purged_at = -math.inf
        self.stats = WallStats()

    def __len__(self) -> int:
        return len(self._walls)

    def get(self, name: str) -> Wall | None:
        return self._walls.get(name)

    def name_of(self, conn: Hashable) -> str | None:
        return self._by_conn.get(conn)

    # -- what walls send -----------------------------------------------------------------

    def report(
        self, conn: Hashable, msg: Report, now: float, address: str = "", opening: bool = False
    ) -> Wall:
        """Take a report from ``conn``; raises :class:`WallError` (``too_soon``,
        ``too_many_walls``) and changes nothing then. ``opening``: not the wall's
        report but its stream's start (``/sse?wall=``), which the interval ignores."""
        if now - self._purged_at >= 1.0:  # a walk over every wall: once a second at most
            self._purge(now)
        wall = self._walls.get(msg.wall)
        if (
            wall is not None
            and wall.conn == conn
            and wall.gone_at is None
            and wall.reported_at is not None
            and now - wall.reported_at < self.cfg.min_report_s
        ):
            self.stats.refused["too_soon"] += 1
            raise WallError("too_soon", f"at most one report per {self.cfg.min_report_s:g} s")
        if wall is None:
            if len(self._walls) >= self.cfg.max_walls and not self._evict_gone():
                self.stats.refused["full"] += 1
                raise WallError(
                    "too_many_walls", f"the gateway lists at most {self.cfg.max_walls} walls"
                )
            wall = self._walls[msg.wall] = Wall(msg.wall, now)
        previous = self._by_conn.get(conn)
        if previous is not None and previous != msg.wall:
            self._gone(previous, now)  # the connection renamed its wall
        if wall.conn != conn or wall.gone_at is not None:
            if wall.conn is not None and self._by_conn.get(wall.conn) == msg.wall:
                del self._by_conn[wall.conn]  # an older page of the same wall
            wall.connects += 1
            wall.reported_at = None
        wall.conn = conn
        wall.gone_at = None
        wall.address = address or wall.address
        self._by_conn[conn] = msg.wall
        wall.report = msg
        wall.heard_at = now
        if not opening:
            wall.reported_at = now
        wall.behind_seq, wall.behind_s = self._behind(msg)
        self.stats.reports += 1
        return wall

    def _behind(self, msg: Report) -> tuple[int, float]:
        if msg.topic is None or msg.seq is None or msg.epoch != self.epoch():
            return 0, 0.0
        pos = self.position(msg.topic)
        if pos is None or pos[0] <= msg.seq:
            return 0, 0.0
        seq, changed_at = pos
        return seq - msg.seq, max(0.0, changed_at - (msg.rx or changed_at))

    def ack(self, conn: Hashable, msg: ActionAck, now: float) -> WallAction:
        """The wall's answer to an action; :class:`WallError` ``unknown_action``."""
        name = self._by_conn.get(conn)
        wall = self._walls.get(name) if name is not None else None
        for action in wall.actions if wall is not None else ():
            if action.id == msg.id:
                if action.acked_at is None:
                    action.acked_at, action.ok, action.detail = now, msg.ok, msg.detail or ""
                    self.stats.acks["ok" if msg.ok else "failed"] += 1
                return action
        self.stats.acks["unknown"] += 1
        raise WallError("unknown_action", f"no action {msg.id!r} was sent to this wall")

    def disconnected(self, conn: Hashable, now: float) -> Wall | None:
        """``conn`` ended: its wall (if it still owns one) is gone from now."""
        name = self._by_conn.pop(conn, None)
        if name is None:
            return None
        return self._gone(name, now)

    def _gone(self, name: str, now: float) -> Wall | None:
        wall = self._walls.get(name)
        if wall is not None and wall.gone_at is None:
            wall.gone_at = now
            if wall.conn is not None:
                self._by_conn.pop(wall.conn, None)
            wall.conn = None
        return wall

    # -- what operators do ---------------------------------------------------------------

    def action(
        self, name: str, action: str, params: dict[str, Any], by: str, now: float
    ) -> tuple[Hashable, WallAction]:
        """A new action for wall ``name``: (its connection, the action) for the shell
        to send. :class:`WallError` ``bad_action``, ``unknown_wall``, ``wall_gone``."""
        if action not in ACTIONS:
            raise WallError("bad_action", f"action must be one of {', '.join(ACTIONS)}")
        wall = self._walls.get(name)
        if wall is None:
            raise WallError("unknown_wall", f"no wall named {name!r}")
        if wall.gone_at is not None or wall.conn is None:
            raise WallError("wall_gone", f"wall {name!r} is gone")
        self._next_id += 1
        act = WallAction(f"a-{self._next_id}", action, params, by, now)
        wall.actions.append(act)
        self.stats.actions[action] += 1
        return wall.conn, act

    # -- listing -------------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        self._purged_at = now
        keep = self.cfg.gone_keep_s
        for name in [n for n, w in self._walls.items() if w.gone_at and now - w.gone_at > keep]:
            del self._walls[name]

    def _evict_gone(self) -> bool:
        gone = [w for w in self._walls.values() if w.gone_at is not None]
        if not gone:
            return False
        del self._walls[min(gone, key=lambda w: w.gone_at or 0.0).name]
        return True

    def judged(self, now: float) -> Iterator[tuple[Wall, str, str]]:
        """Every wall with its (state, why), unsorted."""
        self._purge(now)
        epoch = self.epoch()
        for wall in self._walls.values():
            yield (wall, *wall.judge(now, self.cfg, epoch))

    def counts(self, now: float) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for _, state, _ in self.judged(now):
            out[state] += 1
        return out

    def ranked(self, now: float) -> list[tuple[Wall, str, str]]:
        """Every wall with its (state, why), the worst first: by state, then how far
        behind, then the name."""
        return sorted(self.judged(now), key=lambda t: (_RANK[t[1]], -t[0].behind_s, t[0].name))

    def listing(self, now: float) -> list[dict[str, Any]]:
        """Every wall as a JSON-able dict (:meth:`doc`), the worst first."""
        return [self.doc(wall, state, why, now) for wall, state, why in self.ranked(now)]

    def doc(self, wall: Wall, state: str, why: str, now: float) -> dict[str, Any]:
        r = wall.report
        timeout = self.cfg.action_timeout_s
        doc: dict[str, Any] = {
            "name": wall.name,
            "state": state,
            "why": why,
            "connected": wall.gone_at is None,
            "address": wall.address,
            "first_seen": wall.first_seen,
            "last_heard": wall.heard_at,
            "heard_s_ago": round(now - wall.heard_at, 3),
            "gone_at": wall.gone_at,
            "connects": wall.connects,
            "behind_seq": wall.behind_seq,
            "behind_s": round(wall.behind_s, 3),
            "actions": [a.doc(now, timeout) for a in wall.actions],
        }
        if r is not None:
            doc.update(r.fields())
        return doc
