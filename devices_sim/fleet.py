"""The fleet: devices in a site / line / device hierarchy, a schedule, scenario events.

Sans-io: :meth:`Fleet.step` takes the simulated time (seconds since start) and
returns the messages due up to then. Each device samples at its *scheduled* times
(``phase + k / rate``; phases spread the load evenly), never at the time the driver
happened to call, so a seed fixes every value and every timestamp whatever the
driver's cadence. Scenario events apply at their exact time.

Topics: a device's path is ``<site>/<line>/<kind>-<nnnnn>``; transports publish data
to ``telemetry/<path>`` and presence to ``status/<path>`` (the gateway's default
routes).
"""

from __future__ import annotations

import heapq
import random
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models import KINDS, Sensor, make_sensors

__all__ = ["Device", "Event", "Fleet", "FleetConfig", "FleetError", "Message", "load_scenario"]

SITE_NAMES = (
    "berlin", "paris", "madrid", "rome", "vienna", "oslo", "lisbon", "prague", "warsaw",
    "dublin", "zurich", "milan", "lyon", "munich", "hamburg", "turin", "porto", "bergen",
    "krakow", "gdansk",
)  # fmt: skip
ACTIONS = ("offline", "spike", "stuck", "dropout", "skew")


class FleetError(ValueError):
    """A bad fleet or scenario configuration; the message names the problem."""


@dataclass(frozen=True)
class FleetConfig:
    devices: int = 100
    sites: int = 4
    lines: int = 4  # per site
    rate_hz: float = 1.0  # messages per second per device
    kinds: tuple[str, ...] = ("env", "machine", "server")
    seed: int = 1

    def __post_init__(self) -> None:
        if self.devices < 0:
            raise FleetError(f"devices must be >= 0, got {self.devices}")
        if self.sites < 1 or self.lines < 1:
            raise FleetError("sites and lines must be at least 1")
        if not self.rate_hz > 0:
            raise FleetError(f"rate must be > 0 messages per second per device, got {self.rate_hz}")
        if not self.kinds:
            raise FleetError("at least one device kind is needed")
        for kind in self.kinds:
            if kind not in KINDS:
                raise FleetError(
                    f"unknown sensor kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}"
                )

    @property
    def site_names(self) -> list[str]:
        return [SITE_NAMES[i] if i < len(SITE_NAMES) else f"site{i + 1}" for i in range(self.sites)]


@dataclass(frozen=True)
class Event:
    at_s: float
    action: str
    site: str | None = None
    line: str | None = None  # "<site>/<line>"
    device: str | None = None  # a device path
    fraction: float | None = None  # of the whole fleet, chosen with the fleet's seed
    duration_s: float = 10.0
    factor: float = 3.0  # spike: multiply numeric values
    skew_s: float = 300.0  # skew: device clock offset


@dataclass
class Message:
    """``kind`` "data": ``fields`` and ``ts``; kind "status": ``online``."""

    kind: str
    path: str
    fields: dict[str, Any] | None = None
    ts: float = 0.0
    online: bool | None = None


@dataclass
class Device:
    index: int
    site: str
    line: str
    kind: str
    path: str
    rng: random.Random
    sensors: list[Sensor]
    online: bool = True
    offline_until: float = -1.0
    dropout_until: float = -1.0
    stuck_until: float = -1.0
    spike_next: float = 0.0  # factor for the next sample; 0: none
    skew_s: float = 0.0
    skew_until: float = -1.0
    last_t: float = 0.0
    last_fields: dict[str, Any] = field(default_factory=dict)


def load_scenario(path: str | Path) -> list[Event]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as err:
        raise FleetError(f"scenario {path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise FleetError(f"scenario {path}: not valid TOML: {err}") from None
    extra = set(data) - {"event"}
    if extra:
        raise FleetError(f"scenario {path}: unknown keys {sorted(extra)}; use [[event]] tables")
    events = []
    fields = set(Event.__dataclass_fields__)
    for i, raw in enumerate(data.get("event", [])):
        where = f"scenario {path}: event {i + 1}"
        if not isinstance(raw, dict):
            raise FleetError(f"{where}: expected a table")
        unknown = set(raw) - fields
        if unknown:
            raise FleetError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            events.append(Event(**raw))
        except TypeError as err:
            raise FleetError(f"{where}: {err}") from None
    return events


def addresses(cfg: FleetConfig) -> Iterator[tuple[str, str, str, str]]:
    """Each device's site, line, kind and topic path, in index order."""
    names, kinds = cfg.site_names, cfg.kinds
    for i in range(cfg.devices):
        site = names[i % cfg.sites]
        line = f"line{(i // cfg.sites) % cfg.lines + 1}"
        kind = kinds[i % len(kinds)]
        yield site, line, kind, f"{site}/{line}/{kind}-{i:05d}"


def make_devices(cfg: FleetConfig) -> Iterator[Device]:
    """The fleet's devices, one at a time (about 20 us each: a caller serving while
    it builds a large fleet takes them in slices)."""
    for i, (site, line, kind, path) in enumerate(addresses(cfg)):
        rng = random.Random(f"{cfg.seed}/{i}")
        yield Device(i, site, line, kind, path, rng, make_sensors(kind, rng))


def check_events(cfg: FleetConfig, events: Iterable[Event]) -> list[Event]:
    """The events in time order, each checked against the fleet's sites, lines and
    devices (FleetError for the first bad one); no device is made (a fleet's config
    is checked before the gateway serves, and 20,000 devices take 0.7 s to make)."""
    out = sorted(events, key=lambda e: e.at_s)
    if out:
        found = list(addresses(cfg))
        paths = {a[3] for a in found}
        lines = {f"{a[0]}/{a[1]}" for a in found}
        for e in out:
            _check_event(cfg, e, paths, lines)
    return out


def _check_event(cfg: FleetConfig, e: Event, paths: set[str], lines: set[str]) -> None:
    if e.action not in ACTIONS:
        raise FleetError(
            f"event at {e.at_s} s: unknown action {e.action!r}; allowed: {', '.join(ACTIONS)}"
        )
    if e.at_s < 0 or e.duration_s <= 0:
        raise FleetError(f"event at {e.at_s} s: at_s must be >= 0 and duration_s > 0")
    targets = [x for x in (e.site, e.line, e.device, e.fraction) if x is not None]
    if len(targets) != 1:
        raise FleetError(f"event at {e.at_s} s: name exactly one of site, line, device, fraction")
    if e.site is not None and e.site not in cfg.site_names:
        raise FleetError(
            f"event at {e.at_s} s: no site {e.site!r}; sites: {', '.join(cfg.site_names)}"
        )
    if e.line is not None and e.line not in lines:
        raise FleetError(f"event at {e.at_s} s: no line {e.line!r} (write it as site/lineN)")
    if e.device is not None and e.device not in paths:
        raise FleetError(f"event at {e.at_s} s: no device {e.device!r}")
    if e.fraction is not None and not 0 < e.fraction <= 1:
        raise FleetError(f"event at {e.at_s} s: fraction must be in (0, 1]")


class Fleet:
    def __init__(
        self,
        cfg: FleetConfig,
        events: Iterable[Event] = (),
        *,
        start_wall: float = 0.0,
        devices: list[Device] | None = None,
    ):
        """``devices``: made already by :func:`make_devices` from ``cfg``."""
        self.cfg = cfg
        self.start_wall = start_wall
        self.devices = list(make_devices(cfg)) if devices is None else devices
        self.by_path = {d.path: d for d in self.devices}
        self.events = check_events(cfg, events)
        self._next_event = 0
        period = 1.0 / cfg.rate_hz
        n = max(cfg.devices, 1)
        self._period = period
        self._heap = [(d.index * period / n, d.index) for d in self.devices]
        heapq.heapify(self._heap)
        self.published = 0

    def targets(self, e: Event) -> list[Device]:
        if e.site is not None:
            return [d for d in self.devices if d.site == e.site]
        if e.line is not None:
            return [d for d in self.devices if f"{d.site}/{d.line}" == e.line]
        if e.device is not None:
            return [self.by_path[e.device]]
        assert e.fraction is not None
        rng = random.Random(f"{self.cfg.seed}/event/{e.at_s}/{e.action}")
        count = max(1, round(e.fraction * len(self.devices)))
        return rng.sample(self.devices, min(count, len(self.devices)))

    def initial(self, start: int = 0, stop: int | None = None) -> list[Message]:
        """Every device (of ``devices[start:stop]``) announces itself online
        (retained, for MQTT)."""
        return [Message("status", d.path, online=True) for d in self.devices[start:stop]]

    def final(self) -> list[Message]:
        """A clean shutdown: every device says offline."""
        return [Message("status", d.path, online=False) for d in self.devices]

    def _apply_event(self, e: Event, out: list[Message]) -> None:
        end = e.at_s + e.duration_s
        for d in self.targets(e):
            if e.action == "offline":
                if d.online:
                    d.online = False
                    out.append(Message("status", d.path, online=False))
                d.offline_until = max(d.offline_until, end)
            elif e.action == "dropout":
                d.dropout_until = max(d.dropout_until, end)
            elif e.action == "stuck":
                d.stuck_until = max(d.stuck_until, end)
            elif e.action == "spike":
                d.spike_next = e.factor
            elif e.action == "skew":
                d.skew_s = e.skew_s
                d.skew_until = end

    def step(self, now: float, limit: int | None = None) -> list[Message]:
        """Messages due at simulated times up to ``now`` (in time order); with
        ``limit``, the first ``limit`` devices' (and the events due before them): the
        next call goes on from there."""
        out: list[Message] = []
        heap = self._heap
        devices = self.devices
        period = self._period
        events = self.events
        sampled = 0
        while heap and heap[0][0] <= now:
            if sampled == limit:
                self.published += len(out)
                return out
            sampled += 1
            t, idx = heap[0]
            while self._next_event < len(events) and events[self._next_event].at_s <= t:
                self._apply_event(events[self._next_event], out)
                self._next_event += 1
            heapq.heapreplace(heap, (t + period, idx))
            msg = self._sample(devices[idx], t, out)
            if msg is not None:
                out.append(msg)
        while self._next_event < len(events) and events[self._next_event].at_s <= now:
            self._apply_event(events[self._next_event], out)
            self._next_event += 1
        self.published += len(out)
        return out

    def due(self, now: float) -> bool:
        """Whether a device is due at or before ``now`` (a :meth:`step` with a limit
        left some)."""
        return bool(self._heap) and self._heap[0][0] <= now

    def _sample(self, d: Device, t: float, out: list[Message]) -> Message | None:
        if not d.online:
            if t < d.offline_until:
                return None
            d.online = True
            out.append(Message("status", d.path, online=True))
        dt = t - d.last_t if d.last_t else self._period
        d.last_t = t
        if t < d.stuck_until and d.last_fields:
            fields = dict(d.last_fields)
        else:
            fields = {}
            for s in d.sensors:
                s.last = s.step(d.rng, t, dt)
                fields[s.name] = s.last
            d.last_fields = fields
        if d.spike_next:
            fields = {
                k: (round(v * d.spike_next, 3) if isinstance(v, float) else v)
                for k, v in fields.items()
            }
            d.spike_next = 0.0
        if t < d.dropout_until:
            return None  # the device measured, but nothing reached the network
        skew = d.skew_s if t < d.skew_until else 0.0
        return Message("data", d.path, fields, round(self.start_wall + t + skew, 3))
