"""Property: whatever the updates and however subscribers lag, reconnect or see a
restart, a client rebuilding from snapshots and deltas holds the gateway's state.

Checked after every step:
* every topic a client holds equals the gateway's state *at the seq it holds*;
* the gateway never sent a delta the client could not apply (no gap);
and at every sync point (ticks with no new data, everyone reading), each client
holds exactly the gateway's current state for the topics it subscribes to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.hub import Hub, HubConfig, Subscriber
from gateway.core.mirror import Mirror
from gateway.core.protocol import Resume, Subscribe
from gateway.core.state import Deadband, StateStore, UpdateMode
from gateway.core.topics import RuleTable

from .helpers import deliver, expected_view, mirror_view

TOPICS = ["s/a/0", "s/a/1", "s/b/0", "s/b/1", "$sys/x"]
FIELDS = ["t", "h", "mode", "n"]
FILTERS = [["#"], ["s/a/+"], ["s/+/0", "s/b/#"], ["$sys/#", "s/a/1"]]
RATES = [20.0, 10.0, 5.0]  # every 1, 2 and 4 hub ticks
#: ticks within which every stream has gone out: a period, plus less than another
#: when a group ticked off its phase (late, or after a quiet spell) or moved to another
SYNC_TICKS = 2 * 4

values = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(-2, 2, allow_nan=False).map(lambda x: round(x, 2)),
    st.sampled_from(["run", "stop"]),
)
ops = st.one_of(
    st.tuples(
        st.just("update"),
        st.sampled_from(TOPICS),
        st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3),
        st.sampled_from([UpdateMode.MERGE, UpdateMode.REPLACE]),
    ),
    st.tuples(st.just("presence"), st.sampled_from(TOPICS), st.booleans()),
    st.tuples(st.just("sweep"), st.integers(1, 10)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("take"), st.integers(0, 2)),
    st.tuples(st.just("reconnect"), st.integers(0, 2)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("sync")),
)


@dataclass
class Client:
    filters: list[str]
    rate: float
    mirror: Mirror = field(default_factory=Mirror)
    sub: Subscriber | None = None


class World:
    def __init__(self, clients: list[Client]) -> None:
        self.generation = 0
        self.now = 1000.0
        self.clients = clients
        self.history: dict[tuple[str, str, int], tuple] = {}
        self.start()

    def start(self) -> None:
        self.generation += 1
        self.store = StateStore(
            f"epoch-{self.generation}",
            deadbands=RuleTable([("s/a/+", {"t": Deadband(abs=0.5), "*": Deadband(rel=0.2)})]),
            stale_after=RuleTable([("s/#", 5.0)]),
            max_tombstones=2,
        )
        self.hub = Hub(self.store, HubConfig(tick_hz=20, ring_ticks=3))
        for c in self.clients:
            self.connect(c)

    def connect(self, c: Client) -> None:
        c.sub = self.hub.connect()
        if c.mirror.set_epoch(self.store.epoch):
            self.hub.resume(c.sub, Resume(self.store.epoch, c.mirror.positions()))
        self.hub.subscribe(c.sub, Subscribe("s", tuple(c.filters), c.rate))

    def record(self) -> None:
        for st_ in self.store.states():
            self.history[(self.store.epoch, st_.topic, st_.seq)] = (
                dict(st_.fields),
                st_.online,
                st_.stale,
            )

    def take(self, c: Client) -> None:
        assert c.sub is not None
        deliver(self.hub, c.sub, c.mirror, self.now)

    def step(self, step: tuple) -> bool:  # type: ignore[type-arg]
        """Run one step of a kind every convergence test knows; False for another."""
        kind = step[0]
        if kind == "update":
            _, topic, fields, mode = step
            self.store.apply(topic, fields, self.now, mode=mode)
        elif kind == "presence":
            self.store.set_presence(step[1], step[2], self.now)
        elif kind == "take":
            if step[1] < len(self.clients):
                self.take(self.clients[step[1]])
        elif kind == "reconnect":
            if step[1] < len(self.clients):
                c = self.clients[step[1]]
                assert c.sub is not None
                self.hub.disconnect(c.sub)
                self.connect(c)
        elif kind == "sync":
            self.sync()
        else:
            return False
        return True

    def check_held_states_existed(self) -> None:
        for c in self.clients:
            assert c.mirror.gaps == 0
            for topic, held in c.mirror.topics.items():
                assert c.mirror.epoch == self.store.epoch
                key = (self.store.epoch, topic, held.seq)
                assert key in self.history, key
                assert self.history[key] == (held.fields, held.online, held.stale), key

    def sync(self) -> None:
        for _ in range(SYNC_TICKS):
            self.hub.tick(self.now)
            for c in self.clients:
                self.take(c)
        for c in self.clients:
            assert mirror_view(c.mirror) == expected_view(self.store, c.filters)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clients=st.lists(
        st.tuples(st.sampled_from(FILTERS), st.sampled_from(RATES)), min_size=1, max_size=3
    ),
    steps=st.lists(ops, max_size=60),
)
def test_clients_converge_to_the_gateway_state(
    clients: list[tuple[list[str], float]], steps: list[tuple]
) -> None:
    world = World([Client(list(f), r) for f, r in clients])
    world.record()
    for step in steps:
        kind = step[0]
        world.now += 0.05
        if world.step(step):
            pass
        elif kind == "sweep":
            world.now += step[1]
            world.store.sweep_stale(world.now)
        elif kind == "tick":
            world.hub.tick(world.now)
        elif kind == "restart":
            world.start()
        world.record()
        world.check_held_states_existed()
    world.sync()
    world.check_held_states_existed()
