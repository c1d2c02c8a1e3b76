"""Device models: sensors as deterministic processes of time and a seeded generator.

A sensor is advanced to a time ``t`` (seconds since the fleet started) with the step
``dt`` since its previous sample and the device's own ``random.Random``; given the
same seed and the same sample times it produces the same values, whatever drives it.

Kinds of device (``KINDS``) bundle sensors:

* ``env``: temperature (daily cycle + mean-reverting noise), humidity
* ``machine``: power and current, vibration (with bursts), a production counter, a
  status enum (run / idle / maintenance, a Markov chain)
* ``server``: cpu and memory percentages

Faults are applied on top by the fleet (fleet.py): spikes, stuck values, dropouts,
going offline and back, clock skew.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "SENSOR_KINDS", "Sensor", "make_sensors"]

DAY_S = 86_400.0


@dataclass
class Sensor:
    """One field of a device: ``step(rng, t, dt)`` returns its new value."""

    name: str
    step: Callable[[random.Random, float, float], Any]
    last: Any = None
    numeric: bool = True


def _ou(
    mean: float, theta: float, sigma: float, lo: float, hi: float, start: float, digits: int
) -> Callable[[random.Random, float, float], float]:
    """Ornstein-Uhlenbeck: noise that reverts to ``mean`` (rate ``theta`` per second)."""
    state = [start]

    def step(rng: random.Random, t: float, dt: float) -> float:
        x = state[0]
        x += theta * (mean - x) * dt + sigma * math.sqrt(max(dt, 1e-6)) * rng.gauss(0.0, 1.0)
        x = min(hi, max(lo, x))
        state[0] = x
        return round(x, digits)

    return step


def temperature(rng: random.Random) -> Sensor:
    base = rng.uniform(18.0, 24.0)
    phase = rng.uniform(0, 2 * math.pi)
    noise = _ou(0.0, 0.05, 0.08, -3.0, 3.0, 0.0, 3)

    def step(r: random.Random, t: float, dt: float) -> float:
        daily = 3.0 * math.sin(2 * math.pi * t / DAY_S + phase)
        return round(base + daily + noise(r, t, dt), 2)

    return Sensor("temperature", step)


def humidity(rng: random.Random) -> Sensor:
    return Sensor("humidity", _ou(rng.uniform(35, 55), 0.02, 0.3, 5.0, 95.0, 45.0, 1))


@dataclass
class _Machine:
    power: float
    status: str = "run"
    count: int = 0
    burst: float = 0.0  # seconds of vibration burst left


def machine_sensors(rng: random.Random) -> list[Sensor]:
    rated = rng.choice([1500.0, 3000.0, 5500.0, 7500.0])
    load = _ou(0.7, 0.05, 0.03, 0.0, 1.05, 0.7, 4)
    state = _Machine(power=rated * 0.7)

    def power(r: random.Random, t: float, dt: float) -> float:
        factor = load(r, t, dt) if state.status == "run" else 0.05 * r.random()
        state.power = rated * factor
        return round(state.power, 1)

    def current(r: random.Random, t: float, dt: float) -> float:
        return round(state.power / 400.0 / math.sqrt(3) / 0.9, 2)  # 3-phase 400 V

    def vibration(r: random.Random, t: float, dt: float) -> float:
        if state.burst <= 0 and r.random() < 0.02 * dt:
            state.burst = r.uniform(2.0, 10.0)
        boost = 4.0 if state.burst > 0 else 1.0
        state.burst -= dt
        base = 0.8 if state.status == "run" else 0.05
        return round(abs(r.gauss(base, 0.15)) * boost, 3)

    def counter(r: random.Random, t: float, dt: float) -> int:
        if state.status == "run":
            state.count += int(r.random() < min(1.0, 0.5 * dt)) + int(dt > 2) * int(dt)
        return state.count

    def status(r: random.Random, t: float, dt: float) -> str:
        s = state.status
        p = r.random()
        if s == "run" and p < 0.001 * dt:
            s = "idle" if r.random() < 0.8 else "maintenance"
        elif (s == "idle" and p < 0.02 * dt) or (s == "maintenance" and p < 0.005 * dt):
            s = "run"
        state.status = s
        return s

    # status first: the others depend on it
    return [
        Sensor("status", status, numeric=False),
        Sensor("power", power),
        Sensor("current", current),
        Sensor("vibration", vibration),
        Sensor("count", counter),
    ]


def server_sensors(rng: random.Random) -> list[Sensor]:
    return [
        Sensor("cpu", _ou(rng.uniform(15, 60), 0.1, 4.0, 0.0, 100.0, 30.0, 1)),
        Sensor("memory", _ou(rng.uniform(30, 80), 0.005, 0.5, 0.0, 100.0, 50.0, 1)),
    ]


def env_sensors(rng: random.Random) -> list[Sensor]:
    return [temperature(rng), humidity(rng)]


KINDS: dict[str, Callable[[random.Random], list[Sensor]]] = {
    "env": env_sensors,
    "machine": machine_sensors,
    "server": server_sensors,
}

#: every field name a kind can produce (for validation of scenario targets)
SENSOR_KINDS: dict[str, tuple[str, ...]] = {
    "env": ("temperature", "humidity"),
    "machine": ("status", "power", "current", "vibration", "count"),
    "server": ("cpu", "memory"),
}


def make_sensors(kind: str, rng: random.Random) -> list[Sensor]:
    try:
        factory = KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown device kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}"
        ) from None
    return factory(rng)
