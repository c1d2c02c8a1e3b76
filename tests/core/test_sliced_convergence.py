"""Property: the sliced hub (tiny slices, every other step run while a tick is
suspended between two slices) keeps the convergence guarantees of
test_convergence.py: no gap, every held state existed, and at every sync point each
client holds exactly the gateway's state."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.hub import Hub, HubConfig, Subscriber
from gateway.core.state import UpdateMode

from .test_convergence import FIELDS, FILTERS, RATES, TOPICS, Client, World, values

ops = st.one_of(
    st.tuples(
        st.just("update"),
        st.sampled_from([*TOPICS, "s/c/0", "s/c/1/x"]),  # new topics mid-tick too
        st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3),
        st.sampled_from([UpdateMode.MERGE, UpdateMode.REPLACE]),
    ),
    st.tuples(st.just("presence"), st.sampled_from(TOPICS), st.booleans()),
    st.tuples(st.just("slice"), st.integers(1, 3)),  # resume the tick for n slices
    st.tuples(st.just("take"), st.integers(0, 2)),
    st.tuples(st.just("reconnect"), st.integers(0, 2)),
    st.tuples(st.just("sync")),
)


class SlicedWorld(World):
    def __init__(self, clients: list[Client], slice_items: int) -> None:
        self.slice_items = slice_items
        self.running: Iterator[list[Subscriber]] | None = None
        super().__init__(clients)

    def start(self) -> None:
        self.running = None
        super().start()
        # the same store, a hub with tiny slices (the clients reconnect to it)
        self.hub = Hub(
            self.store, HubConfig(tick_hz=20, ring_ticks=3, slice_items=self.slice_items)
        )
        for c in self.clients:
            c.mirror.set_epoch("")  # a new hub: forget positions, start over
            c.mirror.topics.clear()
            self.connect(c)

    def advance(self, slices: int) -> None:
        for _ in range(slices):
            if self.running is None:
                self.running = self.hub.tick_steps(self.now)
            if next(self.running, None) is None:
                self.running = None

    def sync(self) -> None:
        while self.running is not None:
            self.advance(1)
        super().sync()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clients=st.lists(
        st.tuples(st.sampled_from(FILTERS), st.sampled_from(RATES)), min_size=1, max_size=3
    ),
    slice_items=st.integers(1, 3),
    steps=st.lists(ops, max_size=60),
)
def test_clients_converge_when_ticks_are_sliced(
    clients: list[tuple[list[str], float]], slice_items: int, steps: list[tuple]
) -> None:
    world = SlicedWorld([Client(list(f), r) for f, r in clients], slice_items)
    world.record()
    for step in steps:
        world.now += 0.05
        if not world.step(step) and step[0] == "slice":
            world.advance(step[1])
        world.record()
        world.check_held_states_existed()
    world.sync()
    world.check_held_states_existed()
