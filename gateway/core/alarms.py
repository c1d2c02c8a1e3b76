"""Alarms: rules evaluated on accepted changes and on time, ISA-18.2 states, acks.

Rules (docs/alarms.md is the reference for operators):

* A rule watches the topics its ``filter`` matches. ``high``/``low`` compare the
  numeric field ``field`` with ``threshold``: ``high`` becomes true when the value
  is above the threshold and stays true until it is at or below ``threshold -
  hysteresis`` (``low`` mirrors it). ``offline`` is true while the topic's presence
  is offline, ``stale`` while it is stale. A missing or non-numeric value leaves
  the condition as it was.
* The condition must hold for ``on_delay_s`` before the alarm is raised, and be
  gone for ``off_delay_s`` before it clears; a condition that flips back within
  the delay does nothing. Delays run out in :meth:`AlarmEngine.tick`, so an alarm
  is raised at most one tick interval after its delay, and with no delay on the
  very change that crossed the threshold.
* States per (topic, rule), ISA-18.2: ``normal`` -> raise -> ``active_unacked``;
  ack -> ``active_acked``; clear -> ``normal``. ``active_unacked`` -> clear ->
  ``cleared_unacked``; ack -> ``normal``; raise again -> ``active_unacked``.
* Each alarm is a topic of the store: ``$alarms/<rule>/<device topic>``, written
  (replaced whole) on every state change, so snapshots, deltas, resume and SSE
  carry it unchanged. A rule name is one topic level. An identity sees the alarm
  of every device topic it may see (:func:`with_alarm_grants`).
* After a restart the alarm topics come back with the store (gateway/persist.py);
  :meth:`AlarmEngine.adopt` rebuilds each alarm from its topic (state, raise,
  clear and acknowledgement; the condition from the state), so it goes on as if
  the gateway had never stopped. An alarm whose rule is gone (removed, renamed, no
  longer covering the topic, or of another condition) is cleared: its topic is set
  to ``normal`` with ``rule_removed``, since nothing could ever clear it again.
* An acknowledgement names a client-chosen request id. The answer to ``(who, id)``
  is remembered (the last :data:`MAX_REMEMBERED_ACKS`), so a retry gets the same
  answer and changes nothing. A request naming an alarm that does not exist (or
  that the identity may not see) is refused whole.

Time is a parameter (``now``: the store's wall-clock seconds); nothing here reads
a clock.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from .state import InvalidUpdate, JsonValue, StateStore, TopicState, UpdateMode
from .topics import TopicError, matches, validate_filter

__all__ = [
    "ALARM_PREFIX",
    "CONDITIONS",
    "SEVERITIES",
    "STATES",
    "AckOutcome",
    "Alarm",
    "AlarmEngine",
    "AlarmRule",
    "AlarmStats",
    "alarm_topic",
    "device_of",
    "with_alarm_grants",
]

ALARM_PREFIX: Final = "$alarms/"
SEVERITIES: Final = ("critical", "major", "minor", "warning")
CONDITIONS: Final = ("high", "low", "offline", "stale")
STATES: Final = ("normal", "active_unacked", "active_acked", "cleared_unacked")
MAX_REMEMBERED_ACKS: Final = 4096
MAX_ACK_ALARMS: Final = 1000  # alarms per acknowledgement

_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT_MESSAGES: Final = {
    "high": "{device}: {field} {value}{unit} above {threshold}{unit}",
    "low": "{device}: {field} {value}{unit} below {threshold}{unit}",
    "offline": "{device} is offline",
    "stale": "{device} stopped reporting",
}


class _Blank(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class _Num(float):
    """A number for templates: ``{value}`` prints like ``%g``; ``{value:.1f}`` works."""

    def __format__(self, spec: str) -> str:
        return format(float(self), spec or "g")


@dataclass(frozen=True, slots=True)
class AlarmRule:
    name: str
    filter: str
    condition: str
    severity: str = "warning"
    field: str = ""
    threshold: float | None = None
    hysteresis: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    message: str = ""  # template: {device} {topic} {field} {value} {threshold} {unit} ...

    def __post_init__(self) -> None:
        """Raise ValueError naming the key (the config prefixes where)."""
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError("name: 1 to 64 letters, digits, '_', '.' or '-' (one topic level)")
        try:
            validate_filter(self.filter)
        except TopicError as err:
            raise ValueError(f"filter: {err}") from None
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition: must be one of {', '.join(CONDITIONS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity: must be one of {', '.join(SEVERITIES)}")
        if self.condition in ("high", "low"):
            if not self.field:
                raise ValueError(f"field: a {self.condition!r} rule needs the field to compare")
            if not _finite(self.threshold):
                raise ValueError(f"threshold: a {self.condition!r} rule needs a number")
        for key in ("hysteresis", "on_delay_s", "off_delay_s"):
            v = getattr(self, key)
            if not _finite(v) or v < 0:
                raise ValueError(f"{key}: must be a number >= 0")
        try:
            self.render("device", "topic", 1.0, "")
        except (ValueError, IndexError, AttributeError, KeyError) as err:
            raise ValueError(f"message: not a valid template: {err}") from None

    def render(self, device: str, topic: str, value: float | None, unit: str) -> str:
        template = self.message or _DEFAULT_MESSAGES[self.condition]
        return template.format_map(
            _Blank(
                device=device,
                topic=topic,
                field=self.field,
                value="" if value is None else _Num(value),
                threshold="" if self.threshold is None else _Num(self.threshold),
                unit=unit,
                severity=self.severity,
                rule=self.name,
            )
        )


def _finite(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)  # type: ignore[arg-type]


def alarm_topic(rule: str, topic: str) -> str:
    return f"{ALARM_PREFIX}{rule}/{topic}"


def device_of(topic: str) -> str | None:
    """The device topic an alarm topic is about, or None if it is not an alarm topic."""
    if not topic.startswith(ALARM_PREFIX):
        return None
    _rule, sep, device = topic[len(ALARM_PREFIX) :].partition("/")
    return device if sep and device else None


def with_alarm_grants(grants: Iterable[str] | None) -> tuple[str, ...] | None:
    """Grants plus, for each, the alarms of the topics it grants: ``g`` adds
    ``$alarms/+/g``. None (every topic) stays None."""
    if grants is None:
        return None
    base = tuple(grants)
    return base + tuple(alarm_topic("+", g) for g in base if not g.startswith(ALARM_PREFIX))


@dataclass(slots=True)
class Alarm:
    rule: AlarmRule
    topic: str
    key: str
    state: str = "normal"
    cond: bool = False  # the condition (hysteresis applied), before the delays
    since: float | None = None  # when cond started to differ from the state
    value: float | None = None  # the last value evaluated
    raised_at: float | None = None
    raised_value: float | None = None
    cleared_at: float | None = None
    cleared_value: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ("active_unacked", "active_acked")

    @property
    def unacked(self) -> bool:
        return self.state in ("active_unacked", "cleared_unacked")


@dataclass(frozen=True, slots=True)
class AckOutcome:
    ok: bool
    alarms: tuple[str, ...] = ()  # the alarms named (ok) ...
    changed: tuple[str, ...] = ()  # ... and those this request acknowledged
    code: str = ""  # error code when not ok
    message: str = ""


@dataclass(slots=True)
class AlarmStats:
    #: (severity, state entered) -> count
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    acks: int = 0
    ack_retries: int = 0
    ack_refused: int = 0
    write_failures: int = 0  # alarm topics the store refused (topic too long, limit)


class AlarmEngine:
    def __init__(
        self,
        rules: Sequence[AlarmRule],
        store: StateStore,
        *,
        device_name: Callable[[TopicState], str] | None = None,
        unit: Callable[[str, str], str] | None = None,
        max_cache: int = 200_000,
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("alarm rule names must be unique")
        self.rules = tuple(rules)
        self.store = store
        self.stats = AlarmStats()
        self._device_name = device_name or (lambda st: st.topic)
        self._unit = unit or (lambda topic, name: "")
        self._max_cache = max_cache
        self._cache: dict[str, tuple[AlarmRule, ...]] = {}
        self._alarms: dict[str, Alarm] = {}  # alarm topic -> alarm
        self._open: dict[str, Alarm] = {}  # alarms not in "normal"
        self._pending: dict[str, Alarm] = {}  # alarms with a delay running
        self._acks: OrderedDict[tuple[str, str], AckOutcome] = OrderedDict()

    # -- reading -------------------------------------------------------------------

    def get(self, key: str) -> Alarm | None:
        return self._alarms.get(key)

    def alarms(self) -> Iterable[Alarm]:
        return self._alarms.values()

    def open_alarms(self) -> Iterable[Alarm]:
        """Alarms not in ``normal`` (active, or cleared and unacknowledged)."""
        return self._open.values()

    def _rules_for(self, topic: str) -> tuple[AlarmRule, ...]:
        found = self._cache.get(topic)
        if found is None:
            found = tuple(r for r in self.rules if matches(r.filter, topic))
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            self._cache[topic] = found
        return found

    # -- evaluation ----------------------------------------------------------------

    def observe(self, st: TopicState, now: float) -> None:
        """Evaluate the rules of ``st.topic`` after an accepted change (the store calls
        this for every seq bump; alarm topics are skipped)."""
        if not self.rules or st.topic.startswith("$"):
            return
        for rule in self._rules_for(st.topic):
            if rule.condition in ("high", "low"):
                if st.versions.get(rule.field) != st.seq:
                    continue  # the field did not change now
                raw = st.fields.get(rule.field)
                if type(raw) is not int and type(raw) is not float:
                    continue
                value: float | None = float(raw)
            else:
                if st.meta_seq != st.seq:
                    continue
                value = None
            key = alarm_topic(rule.name, st.topic)
            alarm = self._alarms.get(key)
            cond = self._condition(rule, alarm, st, value)
            if alarm is None:
                if not cond:
                    continue  # no alarm object until the condition is first true
                alarm = self._alarms[key] = Alarm(rule, st.topic, key)
            alarm.value = value if value is not None else alarm.value
            alarm.cond = cond
            self._settle(alarm, st, now)

    @staticmethod
    def _condition(
        rule: AlarmRule, alarm: Alarm | None, st: TopicState, value: float | None
    ) -> bool:
        c = rule.condition
        if c == "offline":
            return st.online is False
        if c == "stale":
            return st.stale
        assert value is not None and rule.threshold is not None
        held = alarm is not None and alarm.cond
        if c == "high":
            return value > (rule.threshold - rule.hysteresis if held else rule.threshold)
        return value < (rule.threshold + rule.hysteresis if held else rule.threshold)

    def _settle(self, alarm: Alarm, st: TopicState | None, now: float) -> None:
        if alarm.cond == alarm.active:
            alarm.since = None
            self._pending.pop(alarm.key, None)
            return
        if alarm.since is None:
            alarm.since = now
        delay = alarm.rule.on_delay_s if alarm.cond else alarm.rule.off_delay_s
        if now - alarm.since < delay:
            self._pending[alarm.key] = alarm
            return
        self._pending.pop(alarm.key, None)
        alarm.since = None
        if alarm.cond:
            alarm.raised_at, alarm.raised_value = now, alarm.value
            alarm.cleared_at = alarm.cleared_value = None
            alarm.acked_by = alarm.acked_at = None
            self._enter(alarm, "active_unacked", st, now)
        else:
            alarm.cleared_at, alarm.cleared_value = now, alarm.value
            self._enter(
                alarm, "normal" if alarm.state == "active_acked" else "cleared_unacked", st, now
            )

    def tick(self, now: float) -> int:
        """Let the delays that have run out take effect; returns how many did."""
        done = 0
        for alarm in list(self._pending.values()):
            delay = alarm.rule.on_delay_s if alarm.cond else alarm.rule.off_delay_s
            if alarm.since is not None and now - alarm.since >= delay:
                self._settle(alarm, None, now)
                done += 1
        return done

    def _enter(self, alarm: Alarm, state: str, st: TopicState | None, now: float) -> None:
        alarm.state = state
        if state == "normal":
            self._open.pop(alarm.key, None)
        else:
            self._open[alarm.key] = alarm
        t = self.stats.transitions
        k = (alarm.rule.severity, state)
        t[k] = t.get(k, 0) + 1
        self._write(alarm, st, now)

    def _write(self, alarm: Alarm, st: TopicState | None, now: float) -> None:
        rule = alarm.rule
        if st is None:
            st = self.store.get(alarm.topic)
        name = self._device_name(st) if st is not None else alarm.topic
        value = alarm.raised_value  # the message tells why it was raised, in every state
        doc: dict[str, JsonValue] = {
            "state": alarm.state,
            "active": alarm.active,
            "acked": not alarm.unacked,
            "severity": rule.severity,
            "rule": rule.name,
            "condition": rule.condition,
            "topic": alarm.topic,
            "device": name,
            "message": rule.render(name, alarm.topic, value, self._unit(alarm.topic, rule.field)),
        }
        if rule.field:
            doc["field"] = rule.field
        if rule.threshold is not None:
            doc["threshold"] = rule.threshold
        for k in (
            "raised_at",
            "raised_value",
            "cleared_at",
            "cleared_value",
            "acked_by",
            "acked_at",
        ):
            v = getattr(alarm, k)
            if v is not None:
                doc[k] = v
        try:
            self.store.apply(alarm.key, doc, now, mode=UpdateMode.REPLACE)
        except InvalidUpdate:
            self.stats.write_failures += 1

    # -- restart -------------------------------------------------------------------

    def adopt(self, st: TopicState, now: float) -> str:
        """Rebuild the alarm of a restored alarm topic ``st`` (before serving).

        Returns ``"adopted"``; ``"removed"`` if its rule is gone (the topic is then
        cleared, if it was not normal); ``"ignored"`` for a topic that is not an
        alarm of this engine's shape or is known already (nothing is changed)."""
        f = st.fields
        state = f.get("state")
        device = device_of(st.topic)
        if device is None or state not in STATES or st.topic in self._alarms:
            return "ignored"
        name = st.topic[len(ALARM_PREFIX) :].partition("/")[0]
        rule = next((r for r in self.rules if r.name == name), None)
        if rule is None or rule.condition != f.get("condition") or not matches(rule.filter, device):
            if state != "normal":
                gone: dict[str, JsonValue] = {"state": "normal", "active": False, "acked": True}
                gone.update(rule_removed=True, cleared_at=now)
                try:
                    self.store.apply(st.topic, gone, now)
                except InvalidUpdate:
                    self.stats.write_failures += 1
            return "removed"
        alarm = Alarm(rule, device, st.topic, state=state)
        alarm.cond = alarm.active  # hysteresis holds a raised alarm as it did
        for k in ("raised_at", "raised_value", "cleared_at", "cleared_value", "acked_at"):
            v = f.get(k)
            setattr(alarm, k, float(v) if v is not None and _finite(v) else None)
        by = f.get("acked_by")
        alarm.acked_by = by if type(by) is str else None
        alarm.value = alarm.raised_value if alarm.active else alarm.cleared_value
        self._alarms[st.topic] = alarm
        if state != "normal":
            self._open[st.topic] = alarm
        return "adopted"

    def mirror(self, st: TopicState, now: float) -> str:
        """A replica's engine (gateway/cluster) follows the authority's alarm topic
        ``st``, for ``/api/alarms``; it never evaluates rules nor writes."""
        self._alarms.pop(st.topic, None)
        self._open.pop(st.topic, None)
        f = st.fields
        name = st.topic[len(ALARM_PREFIX) :].partition("/")[0]
        device = device_of(st.topic)
        if (
            f.get("state") not in STATES
            or device is None
            or not any(
                r.name == name and r.condition == f.get("condition") and matches(r.filter, device)
                for r in self.rules
            )
        ):
            return "ignored"  # adopt() would clear it: only the authority writes
        return self.adopt(st, now)

    # -- acknowledgement -----------------------------------------------------------

    def ack(
        self,
        keys: Sequence[str],
        who: str,
        request_id: str,
        now: float,
        *,
        may_see: Callable[[str], bool] | None = None,
    ) -> AckOutcome:
        """Acknowledge ``keys`` (alarm topics) as ``who``; idempotent per request id."""
        remembered = self._acks.get((who, request_id))
        if remembered is not None:
            self.stats.ack_retries += 1
            return remembered
        outcome = self._ack(keys, who, now, may_see)
        if not outcome.ok:
            self.stats.ack_refused += 1
        self._acks[(who, request_id)] = outcome
        if len(self._acks) > MAX_REMEMBERED_ACKS:
            self._acks.popitem(last=False)
        return outcome

    def _ack(
        self,
        keys: Sequence[str],
        who: str,
        now: float,
        may_see: Callable[[str], bool] | None,
    ) -> AckOutcome:
        if not keys or len(keys) > MAX_ACK_ALARMS:
            return AckOutcome(
                False, code="bad_message", message=f"name 1 to {MAX_ACK_ALARMS} alarms"
            )
        found: list[Alarm] = []
        for key in dict.fromkeys(keys):
            alarm = self._alarms.get(key)
            if alarm is None or (may_see is not None and not may_see(alarm.topic)):
                return AckOutcome(
                    False,
                    code="unknown_alarm",
                    message=f"no alarm {key[:200]!r} (nothing was acknowledged)",
                )
            found.append(alarm)
        changed: list[str] = []
        for alarm in found:
            if not alarm.unacked:
                continue  # acknowledged already (or normal): nothing to do
            alarm.acked_by, alarm.acked_at = who, now
            self.stats.acks += 1
            changed.append(alarm.key)
            self._enter(
                alarm, "active_acked" if alarm.state == "active_unacked" else "normal", None, now
            )
        return AckOutcome(True, tuple(a.key for a in found), tuple(changed))

    # -- metrics -------------------------------------------------------------------

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(active by severity, unacknowledged by severity), every severity present."""
        active = dict.fromkeys(SEVERITIES, 0)
        unacked = dict.fromkeys(SEVERITIES, 0)
        for alarm in self._open.values():
            sev = alarm.rule.severity
            if alarm.active:
                active[sev] += 1
            if alarm.unacked:
                unacked[sev] += 1
        return active, unacked
