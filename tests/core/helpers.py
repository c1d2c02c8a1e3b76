"""Small drivers for the sans-io hub, shared by the core tests."""

from __future__ import annotations

from gateway.core.hub import Hub, Subscriber
from gateway.core.mirror import Mirror
from gateway.core.protocol import decode_server
from gateway.core.state import Delta, Snapshot, StateStore
from gateway.core.topics import matches


def deliver(hub: Hub, sub: Subscriber, mirror: Mirror, now: float = 0.0) -> list[str]:
    """Take the subscriber's frames and apply them; returns the outcomes."""
    outcomes = []
    for frame in hub.take(sub, now):
        for msg in decode_server(frame):
            assert isinstance(msg, Snapshot | Delta)
            outcomes.append(mirror.apply(msg))
    return outcomes


def expected_view(store: StateStore, filters: list[str]) -> dict[str, tuple]:
    return {
        st.topic: (st.seq, st.fields, st.online, st.stale)
        for st in store.states()
        if st.seq and any(matches(f, st.topic) for f in filters)
    }


def mirror_view(mirror: Mirror) -> dict[str, tuple]:
    return {t: (m.seq, m.fields, m.online, m.stale) for t, m in mirror.topics.items()}
