"""The in-process transport: the fleet writes straight into a gateway's state store.

Used by ``gateway run --simulate N`` and ``make run``: live data with no broker. It
drives :class:`devices_sim.fleet.Fleet` from the gateway's clock (so tests can use
Trio's MockClock) at ``STEP_S`` intervals; the values do not depend on that cadence.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from gateway.memory import young_only

from .fleet import Fleet, FleetConfig, Message, load_scenario, make_devices

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config import SimulatorConfig
    from gateway.core.state import StateStore

__all__ = ["STEP_S", "apply_messages", "run_inprocess"]

log = logging.getLogger("devices_sim")
STEP_S = 0.02
#: simulated seconds one step may cover when behind (5,000 devices at 10 Hz make
#: 2,000 messages in 0.04 s, about 30 ms of work: made SAMPLE_STEP at a time)
MAX_CATCH_UP_S = 0.04
BATCH = 500  # messages applied between two checkpoints of the event loop at most
SLICE_S = 0.001  # and time spent applying them (the gateway's loop-lag budget)
APPLY_STEP = 8  # messages between two looks at the clock
BUILD_STEP = 32  # devices made between two checkpoints (~20 us each)
#: device samples made between two checkpoints (~15 us each; 10 to 30 times that
#: while a join wave writes gigabytes: cache misses; at 16, steps of 5 to 10 ms were
#: the largest part of the 2,000-screen wave's late loop-lag samples)
SAMPLE_STEP = 8


async def build_fleet(cfg: SimulatorConfig, start_wall: float) -> Fleet:
    """The fleet, its devices made in slices (the gateway serves already: 20,000 of
    them at once held its loop 0.9 s, 0.5 s of it full collections)."""
    fleet_cfg = FleetConfig(
        devices=cfg.devices, sites=cfg.sites, lines=cfg.lines, rate_hz=cfg.rate_hz, seed=cfg.seed
    )
    events = load_scenario(cfg.scenario) if cfg.scenario else []
    devices = []
    for device in make_devices(fleet_cfg):
        devices.append(device)
        if not len(devices) % BUILD_STEP:
            await trio.lowlevel.checkpoint()
    return Fleet(fleet_cfg, events, start_wall=start_wall, devices=devices)


def apply_messages(store: StateStore, messages: list[Message], wall: float) -> int:
    """Apply fleet messages to the store; returns how many were refused (none, normally)."""
    from gateway.core.state import InvalidUpdate

    refused = 0
    for m in messages:
        try:
            if m.kind == "data":
                assert m.fields is not None
                store.apply(m.path, m.fields, wall, device_ts=m.ts)
            else:
                assert m.online is not None
                store.set_presence(m.path, m.online, wall)
        except InvalidUpdate:
            refused += 1
    return refused


async def run_inprocess(
    store: StateStore,
    clock: Clock,
    cfg: SimulatorConfig,
    *,
    task_status: trio.TaskStatus[Fleet] = trio.TASK_STATUS_IGNORED,
) -> None:
    with young_only():  # the devices and their topics live as long as the process
        fleet = await build_fleet(cfg, clock.wall())
        for start in range(0, len(fleet.devices), BATCH):
            await apply_sliced(store, fleet.initial(start, start + BATCH), clock)
            await trio.lowlevel.checkpoint()
    t0 = clock.mono()
    log.info(
        "simulating %d devices on %d sites at %g messages/s each",
        cfg.devices,
        cfg.sites,
        cfg.rate_hz,
    )
    task_status.started(fleet)
    n = 0
    sim_now = 0.0
    while True:
        n += 1
        await trio.sleep_until(t0 + n * STEP_S)
        # Simulated time advances at most MAX_CATCH_UP_S per step, and a step's
        # messages go in in batches with a checkpoint between them: a fleet larger
        # than the process can take falls behind (its data ages, honestly) instead of
        # building ever larger bursts that hold the event loop and the memory.
        sim_now = min(clock.mono() - t0, sim_now + MAX_CATCH_UP_S)
        while True:  # made in parts too: 400 messages (~6 ms) at 10,000 devices at 1 Hz
            await apply_sliced(store, fleet.step(sim_now, SAMPLE_STEP), clock)
            if not fleet.due(sim_now):
                break
            await trio.lowlevel.checkpoint()


async def apply_sliced(store: StateStore, msgs: list[Message], clock: Clock) -> None:
    """:func:`apply_messages` in steps as long as the gateway's own (fanout.py
    ``SLICE_S``): a task that ran longer ones would take the core from the fan-out's."""
    applied, until = 0, trio.current_time() + SLICE_S
    for i in range(0, len(msgs), APPLY_STEP):
        if applied >= BATCH or trio.current_time() >= until:
            await trio.lowlevel.checkpoint()
            applied, until = 0, trio.current_time() + SLICE_S
        apply_messages(store, msgs[i : i + APPLY_STEP], clock.wall())
        applied += APPLY_STEP
