"""The client side of the state protocol: a local copy rebuilt from snapshots and deltas.

Rules (docs/protocol.md, "Applying state messages"):

* A snapshot replaces the topic's copy whenever its ``seq`` is newer than the copy.
* A delta with ``seq <= held`` is old news: skipped.
* A delta with ``base <= held < seq`` is applied: ``set`` fields are written,
  ``unset`` fields removed, ``online``/``stale`` taken when present. The result is
  exactly the gateway's state at ``seq`` (state.py, invariant 3).
* A delta with ``base > held`` (or for a topic not held) is a *gap*: the copy is
  left alone and the topic is reported so the caller can ask for a resync
  (a ``resume`` with the held positions).
* A new epoch means none of the copies can be resumed: the caller clears them.

Sans-io: used by the Python client (``gateway.client``) and by the tests, and the
JavaScript client in ``dashboard/`` follows the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .state import Delta, JsonValue, Snapshot

__all__ = ["Mirror", "MirrorTopic"]

Outcome = Literal["applied", "skipped", "gap"]


@dataclass(slots=True)
class MirrorTopic:
    seq: int
    fields: dict[str, JsonValue] = field(default_factory=dict)
    online: bool | None = None
    stale: bool = False
    ts: float | None = None
    rx: float = 0.0


class Mirror:
    def __init__(self) -> None:
        self.epoch: str | None = None
        self.topics: dict[str, MirrorTopic] = {}
        self.gaps = 0
        self.applied = 0
        self.skipped = 0

    def set_epoch(self, epoch: str) -> bool:
        """Adopt the server's epoch; returns True if the held copies can be resumed."""
        if epoch == self.epoch:
            return True
        self.epoch = epoch
        self.topics.clear()
        return False

    def positions(self) -> dict[str, int]:
        return {t: m.seq for t, m in self.topics.items()}

    def apply(self, msg: Snapshot | Delta) -> Outcome:
        held = self.topics.get(msg.topic)
        if type(msg) is Snapshot:
            # a resync snapshot replaces whatever is held (even a seq ahead of it)
            if held is not None and held.seq >= msg.seq and msg.reason != "resync":
                self.skipped += 1
                return "skipped"
            self.topics[msg.topic] = MirrorTopic(
                msg.seq, dict(msg.fields), msg.online, msg.stale, msg.ts, msg.rx
            )
            self.applied += 1
            return "applied"
        assert type(msg) is Delta
        if held is None or msg.base > held.seq:
            self.gaps += 1
            return "gap"
        if msg.seq <= held.seq:
            self.skipped += 1
            return "skipped"
        held.fields.update(msg.set)
        for name in msg.unset:
            held.fields.pop(name, None)
        if msg.meta:
            held.online = msg.online
            held.stale = msg.stale
        held.seq = msg.seq
        held.ts = msg.ts
        held.rx = msg.rx
        self.applied += 1
        return "applied"
