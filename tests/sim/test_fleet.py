"""The simulator's fleet: determinism, scenarios on MockClock, configuration errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from devices_sim.fleet import Device, Event, Fleet, FleetConfig, FleetError, load_scenario
from devices_sim.inprocess import run_inprocess
from gateway.clock import Clock
from gateway.config import SimulatorConfig
from gateway.core.state import StateStore


def run(fleet: Fleet, until: float, step: float, limit: int | None = None) -> list[tuple]:
    out = []
    t = 0.0
    while t < until:
        t = min(until, t + step)
        while True:
            out += [(m.kind, m.path, m.fields, m.ts, m.online) for m in fleet.step(t, limit)]
            if not fleet.due(t):
                break
    return out


def test_same_seed_same_values_whatever_the_driver_cadence() -> None:
    cfg = FleetConfig(devices=30, sites=3, rate_hz=5, seed=42)
    a = run(Fleet(cfg, start_wall=1000.0), 9.999, 0.013)
    b = run(Fleet(cfg, start_wall=1000.0), 9.999, 0.5)
    assert len(a) == 30 * 5 * 10
    assert a == b
    # made a few devices at a time (the embedded fleet's steps): the same messages
    assert run(Fleet(cfg, start_wall=1000.0), 9.999, 0.5, limit=7) == a
    c = run(
        Fleet(FleetConfig(devices=30, sites=3, rate_hz=5, seed=43), start_wall=1000.0), 10.0, 0.5
    )
    assert [x[2] for x in c] != [x[2] for x in a]


def test_hierarchy_kinds_and_rate() -> None:
    fleet = Fleet(FleetConfig(devices=12, sites=2, lines=3))
    assert fleet.devices[0].path == "berlin/line1/env-00000"
    assert fleet.devices[1].path == "paris/line1/machine-00001"
    assert fleet.devices[5].path == "paris/line3/server-00005"
    assert {d.site for d in fleet.devices} == {"berlin", "paris"}
    msgs = fleet.step(9.999)  # [0, 10): device 0 (phase 0) would sample again at 10
    assert len(msgs) == 12 * 10  # 1 message per second per device, phases spread
    fields = {m.path.split("/")[-1].split("-")[0]: set(m.fields or {}) for m in msgs}
    assert fields == {
        "env": {"temperature", "humidity"},
        "machine": {"status", "power", "current", "vibration", "count"},
        "server": {"cpu", "memory"},
    }


def test_faults_spike_stuck_dropout_skew() -> None:
    events = [
        Event(at_s=5, action="spike", device="berlin/line1/env-00000", factor=10),
        Event(at_s=10, action="stuck", device="paris/line1/machine-00001", duration_s=5),
        Event(at_s=10, action="dropout", device="madrid/line1/server-00002", duration_s=5),
        Event(at_s=10, action="skew", device="rome/line1/env-00003", skew_s=600, duration_s=5),
    ]
    fleet = Fleet(FleetConfig(devices=4, sites=4), events, start_wall=0.0)
    by: dict[str, list] = {}
    t = 0.0
    while t < 20:
        t += 0.25
        for m in fleet.step(t):
            by.setdefault(m.path, []).append(m)
    temps = [m.fields["temperature"] for m in by["berlin/line1/env-00000"]]
    assert max(temps) > 5 * sorted(temps)[len(temps) // 2]  # one spiked sample
    stuck = [m for m in by["paris/line1/machine-00001"] if 10 <= m.ts < 15]
    assert len(stuck) >= 4 and all(m.fields == stuck[0].fields for m in stuck)
    assert not [m for m in by["madrid/line1/server-00002"] if 10 <= m.ts < 15]
    skewed = [m.ts - round(m.ts) for m in by["rome/line1/env-00003"]]
    assert any(m.ts > 600 for m in by["rome/line1/env-00003"] if m.ts < 616)
    assert skewed


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    p = tmp_path / "incidents.toml"
    p.write_text(
        '[[event]]\nat_s = 30\naction = "offline"\nsite = "berlin"\nduration_s = 20\n\n'
        '[[event]]\nat_s = 60\naction = "spike"\nfraction = 0.05\nfactor = 4\n'
    )
    return p


async def test_scenario_events_happen_at_their_time(
    autojump_clock: trio.testing.MockClock, scenario: Path
) -> None:
    store = StateStore("e")
    clock = Clock()
    cfg = SimulatorConfig(devices=40, sites=4, rate_hz=1, scenario=str(scenario))
    berlin = [
        f"berlin/line{(i // 4) % 4 + 1}/{k}-{i:05d}"
        for i, k in ((i, ("env", "machine", "server")[i % 3]) for i in range(0, 40, 4))
    ]
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(run_inprocess, store, clock, cfg)

        def online() -> list[bool | None]:
            return [store.get(p).online for p in berlin]  # type: ignore[union-attr]

        await trio.sleep_until(t0 + 29.9)
        assert all(online())
        await trio.sleep_until(t0 + 30.1)
        assert not any(online())
        paris = store.get("paris/line1/machine-00001")
        assert paris is not None and paris.online
        await trio.sleep_until(t0 + 49.9)
        assert not any(online())
        await trio.sleep_until(t0 + 51.1)  # back with their next sample after 50 s
        assert all(online())
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("cfg", "events", "message"),
    [
        (dict(kinds=("env", "robot")), [], "unknown sensor kind 'robot'"),
        (dict(rate_hz=-1), [], "rate must be > 0"),
        (dict(devices=-5), [], "devices must be >= 0"),
        ({}, [Event(at_s=1, action="offline", site="atlantis")], "no site 'atlantis'"),
        ({}, [Event(at_s=1, action="explode", site="berlin")], "unknown action 'explode'"),
        ({}, [Event(at_s=1, action="offline")], "exactly one of"),
        ({}, [Event(at_s=1, action="stuck", line="berlin/line9")], "no line 'berlin/line9'"),
    ],
)
def test_bad_configuration_names_the_problem(cfg: dict, events: list, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        Fleet(FleetConfig(**cfg), events)


def test_scenario_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text('[[event]]\nat_s = 1\naction = "offline"\nwhere = "x"\n')
    with pytest.raises(FleetError, match="unknown keys"):
        load_scenario(bad)
    with pytest.raises(FleetError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


async def test_a_large_fleet_starts_in_bounded_steps(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The devices are made and announce themselves a batch at a time too: the
    gateway serves before its sources start (20,000 devices at once held its loop
    0.9 s)."""
    import devices_sim.inprocess as inprocess

    made = [0]
    make_devices = inprocess.make_devices

    def counted(cfg: FleetConfig) -> Iterator[Device]:
        for device in make_devices(cfg):
            made[0] += 1
            yield device

    monkeypatch.setattr(inprocess, "make_devices", counted)
    store = StateStore("e")
    cfg = SimulatorConfig(devices=5000, sites=2, rate_hz=1)
    steps = _MessagesPerStep(store, made)
    trio.lowlevel.add_instrument(steps)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_inprocess, store, Clock(), cfg)
        trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    assert sum(1 for _ in store.topics()) == made[0] == cfg.devices  # all, once started
    assert 0 < steps.largest <= inprocess.BATCH
    assert 0 < steps.most_made <= inprocess.BUILD_STEP


class _MessagesPerStep(trio.abc.Instrument):
    """The messages applied within one task step (the work between checkpoints), told
    by the store's changes (data and presence alike), and the devices made (``made``:
    a count kept by the caller)."""

    def __init__(self, store: StateStore, made: list[int] | None = None) -> None:
        self.store = store
        self.made = made or [0]
        self.largest = self.most_made = 0
        self.at: tuple[int, int] | None = None  # None: the step it was added in

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.at = (self.store.changes, self.made[0])

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.at is not None:
            self.largest = max(self.largest, self.store.changes - self.at[0])
            self.most_made = max(self.most_made, self.made[0] - self.at[1])


async def test_a_fleet_behind_the_process_catches_up_in_bounded_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the loop was held for 10 s, the embedded fleet does not apply 10 s of
    messages in one go (a burst that held the loop, and grew without end when the
    fleet was faster than the process): it catches up MAX_CATCH_UP_S of simulated
    time per step, its messages made SAMPLE_STEP devices at a time between two
    checkpoints."""
    from devices_sim.inprocess import SAMPLE_STEP

    store = StateStore("e")
    cfg = SimulatorConfig(devices=2000, sites=2, rate_hz=10)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_inprocess, store, Clock(), cfg)
        await trio.sleep(1.0)
        steps = _MessagesPerStep(store)
        trio.lowlevel.add_instrument(steps)
        before = store.stats.messages
        autojump_clock.jump(10.0)  # the loop was held (as a stall would)
        await trio.sleep(1.0)
        caught_up = store.stats.messages - before
        trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    assert caught_up >= cfg.devices * cfg.rate_hz * 10  # it did catch up...
    assert 0 < steps.largest <= 2 * SAMPLE_STEP  # ...a part at a time (data, presence)
