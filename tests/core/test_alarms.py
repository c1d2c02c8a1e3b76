"""Alarm rules, ISA-18.2 states and acknowledgement, in the sans-io core."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.alarms import (
    AlarmEngine,
    AlarmRule,
    alarm_topic,
    device_of,
    with_alarm_grants,
)
from gateway.core.state import StateStore, TopicState
from gateway.core.topics import matches


def engine(*rules: AlarmRule) -> tuple[StateStore, AlarmEngine]:
    store = StateStore("e", stale_learn=False)
    eng = AlarmEngine(rules, store)
    store.on_accept = eng.observe
    return store, eng


HIGH = AlarmRule("hot", "plant/#", "high", "critical", field="temp", threshold=80.0, hysteresis=5.0)


def state_of(store: StateStore, key: str) -> str | None:
    st = store.get(key)
    return None if st is None else st.fields["state"]


def test_raise_on_the_crossing_change_and_not_within_hysteresis() -> None:
    store, _ = engine(HIGH)
    key = alarm_topic("hot", "plant/a/oven")
    store.apply("plant/a/oven", {"temp": 79.0}, 1.0)
    assert store.get(key) is None  # below: no alarm topic at all
    store.apply("plant/a/oven", {"temp": 80.5}, 2.0)
    assert state_of(store, key) == "active_unacked"
    doc = store.get(key)
    assert doc is not None
    assert doc.fields["raised_value"] == 80.5 and doc.fields["raised_at"] == 2.0
    assert doc.fields["severity"] == "critical" and "80.5" in doc.fields["message"]
    seq = doc.seq
    for v, t in ((78.0, 3.0), (75.5, 4.0), (81.0, 5.0)):  # inside the hysteresis band
        store.apply("plant/a/oven", {"temp": v}, t)
    assert state_of(store, key) == "active_unacked" and doc.seq == seq  # no flapping
    store.apply("plant/a/oven", {"temp": 75.0}, 6.0)  # at threshold - hysteresis: clears
    assert state_of(store, key) == "cleared_unacked"
    assert doc.fields["cleared_value"] == 75.0 and doc.fields["cleared_at"] == 6.0


def test_on_delay_needs_the_condition_held_and_tick_raises_it() -> None:
    rule = AlarmRule("hot", "#", "high", field="t", threshold=10, on_delay_s=5, off_delay_s=3)
    store, eng = engine(rule)
    key = alarm_topic("hot", "d")
    store.apply("d", {"t": 11}, 100.0)
    eng.tick(104.9)
    assert state_of(store, key) is None  # not before the on-delay
    store.apply("d", {"t": 9}, 104.95)  # flips back within the delay
    eng.tick(106.0)
    assert state_of(store, key) is None
    store.apply("d", {"t": 12}, 110.0)
    eng.tick(114.99)
    assert state_of(store, key) is None
    assert eng.tick(115.0) == 1
    assert state_of(store, key) == "active_unacked"
    assert store.get(key).fields["raised_at"] == 115.0  # type: ignore[union-attr]
    store.apply("d", {"t": 1}, 120.0)
    eng.tick(122.9)
    assert state_of(store, key) == "active_unacked"  # off-delay running
    eng.tick(123.0)
    assert state_of(store, key) == "cleared_unacked"


def test_isa_states_and_acknowledgement() -> None:
    store, eng = engine(HIGH)
    key = alarm_topic("hot", "plant/x")
    store.apply("plant/x", {"temp": 90}, 1.0)
    out = eng.ack([key], "alice", "r1", 2.0)
    assert out.ok and out.changed == (key,)
    assert state_of(store, key) == "active_acked"
    doc = store.get(key)
    assert doc is not None and doc.fields["acked_by"] == "alice" and doc.fields["acked_at"] == 2.0
    store.apply("plant/x", {"temp": 10}, 3.0)
    assert state_of(store, key) == "normal"  # acknowledged and cleared
    store.apply("plant/x", {"temp": 90}, 4.0)
    assert state_of(store, key) == "active_unacked"
    assert "acked_by" not in doc.fields  # a new raise needs a new acknowledgement
    store.apply("plant/x", {"temp": 10}, 5.0)
    assert state_of(store, key) == "cleared_unacked"
    assert eng.ack([key], "bob", "r2", 6.0).ok
    assert state_of(store, key) == "normal"
    assert eng.stats.transitions[("critical", "normal")] == 2


def restarted(store: StateStore, *rules: AlarmRule) -> tuple[StateStore, AlarmEngine]:
    """A new store and engine holding ``store``'s topics as a checkpoint brings them back."""
    from gateway.core import snapshotfile as sf

    head, body = sf.assemble(
        {"epoch": "e", "changes": 0, "topics": 0}, list(sf.encode_topics(store))
    )
    states: list[TopicState] = []
    for _ in sf.decode_topics(sf.parse(head + b"".join(body)).sections["topics"], states):
        pass
    new, eng = engine(*rules)
    new.on_accept = None  # as gateway/persist.py restores
    for state in states:
        assert new.restore(state)
    new.on_accept = eng.observe
    return new, eng


def test_an_acknowledged_alarm_survives_a_restart_and_clears_normally() -> None:
    store, eng = engine(HIGH)
    key, other = alarm_topic("hot", "plant/x"), alarm_topic("hot", "plant/y")
    store.apply("plant/x", {"temp": 90.0}, 1.0)
    assert eng.ack([key], "alice", "r1", 2.0).ok
    store.apply("plant/y", {"temp": 95.0}, 3.0)  # raised, not acknowledged
    before = {k: dict(store.get(k).fields) for k in (key, other)}  # type: ignore[union-attr]

    store, eng = restarted(store, HIGH)
    assert [eng.adopt(store.get(k), 10.0) for k in (key, other)] == ["adopted"] * 2  # type: ignore[arg-type]
    assert {k: store.get(k).fields for k in (key, other)} == before  # type: ignore[union-attr]
    alarm = eng.get(key)
    assert alarm is not None and alarm.state == "active_acked" and alarm.active
    assert (alarm.acked_by, alarm.acked_at, alarm.raised_at, alarm.raised_value) == (
        "alice", 2.0, 1.0, 90.0,
    )  # fmt: skip
    active, unacked = eng.counts()
    assert (active["critical"], unacked["critical"]) == (2, 1)
    assert eng.ack([key], "bob", "r9", 11.0).changed == ()  # acknowledged already
    store.apply("plant/x", {"temp": 77.0}, 12.0)  # inside the hysteresis band: held
    assert state_of(store, key) == "active_acked"
    store.apply("plant/x", {"temp": 70.0}, 13.0)  # the value returns: acknowledged, so normal
    assert state_of(store, key) == "normal"
    assert store.get(key).fields["acked_by"] == "alice"  # type: ignore[union-attr]
    assert eng.ack([other], "bob", "r10", 14.0).changed == (other,)
    assert state_of(store, other) == "active_acked"


def test_an_alarm_whose_rule_is_gone_is_cleared_after_a_restart() -> None:
    store, _ = engine(HIGH)
    key = alarm_topic("hot", "plant/x")
    store.apply("plant/x", {"temp": 90.0}, 1.0)
    other = AlarmRule("hot", "plant/#", "low", field="temp", threshold=0.0)  # same name
    for rules in ((), (other,)):
        new, eng = restarted(store, *rules)
        got = new.get(key)
        assert got is not None and eng.adopt(got, 10.0) == "removed"
        assert eng.get(key) is None and got.fields["state"] == "normal"
        assert got.fields["rule_removed"] is True and got.fields["cleared_at"] == 10.0
        assert got.fields["raised_value"] == 90.0  # what it was is kept
    assert eng.adopt(new.get("plant/x"), 10.0) == "ignored"  # type: ignore[arg-type]


def test_ack_is_idempotent_per_request_id_and_refuses_unknown_alarms() -> None:
    store, eng = engine(HIGH)
    key = alarm_topic("hot", "plant/x")
    store.apply("plant/x", {"temp": 90}, 1.0)
    missing = alarm_topic("hot", "plant/nothing")
    refused = eng.ack([key, missing], "alice", "r1", 2.0)
    assert not refused.ok and refused.code == "unknown_alarm"
    assert state_of(store, key) == "active_unacked"  # refused whole
    first = eng.ack([key], "alice", "r2", 3.0)
    seq = store.get(key).seq  # type: ignore[union-attr]
    again = eng.ack([key], "alice", "r2", 9.0)
    assert again == first and store.get(key).seq == seq  # type: ignore[union-attr]
    assert eng.stats.ack_retries == 1
    hidden = eng.ack([key], "eve", "r3", 3.0, may_see=lambda topic: False)
    assert not hidden.ok and hidden.code == "unknown_alarm"


def test_offline_and_stale_conditions() -> None:
    off = AlarmRule("gone", "#", "offline", "major")
    stale = AlarmRule("quiet", "#", "stale", "minor")
    store = StateStore("e", stale_learn=False)
    eng = AlarmEngine([off, stale], store)
    store.on_accept = eng.observe
    store.apply("d", {"v": 1}, 0.0)
    store.set_presence("d", False, 1.0)
    assert state_of(store, alarm_topic("gone", "d")) == "active_unacked"
    store.mark_all_stale(2.0)
    assert state_of(store, alarm_topic("quiet", "d")) == "active_unacked"
    assert store.get(alarm_topic("quiet", "d")).stale is False  # type: ignore[union-attr]
    store.set_presence("d", True, 3.0)
    assert state_of(store, alarm_topic("gone", "d")) == "cleared_unacked"
    assert state_of(store, alarm_topic("quiet", "d")) == "cleared_unacked"
    active, unacked = eng.counts()
    assert active == {"critical": 0, "major": 0, "minor": 0, "warning": 0}
    assert unacked == {"critical": 0, "major": 1, "minor": 1, "warning": 0}


def test_rule_validation_names_the_key() -> None:
    with pytest.raises(ValueError, match="threshold"):
        AlarmRule("x", "#", "high", field="t")
    with pytest.raises(ValueError, match="name"):
        AlarmRule("a/b", "#", "offline")
    with pytest.raises(ValueError, match="severity"):
        AlarmRule("x", "#", "offline", "fatal")
    with pytest.raises(ValueError, match="message"):
        AlarmRule("x", "#", "offline", message="{device")
    with pytest.raises(ValueError, match="message"):
        AlarmRule("x", "#", "high", field="t", threshold=1, message="{value:q}")


def test_message_templates_format_numbers() -> None:
    rule = AlarmRule(
        "x",
        "#",
        "high",
        field="t",
        threshold=80,
        message="{device} {value:.1f}{unit} > {threshold} {nope}",
    )
    assert rule.render("Oven", "o/1", 81.25, "°C") == "Oven 81.2°C > 80 {nope}"
    assert AlarmRule("y", "#", "high", field="t", threshold=0.5).render("D", "d", 0.75, "") == (
        "D: t 0.75 above 0.5"
    )


def test_alarm_grants_map_to_the_device_topic() -> None:
    grants = with_alarm_grants(["site/a/#", "x/+"])
    assert grants is not None
    for topic, seen in (("site/a/p1", True), ("site/b/p1", False), ("x/1", True)):
        key = alarm_topic("hot", topic)
        assert device_of(key) == topic
        assert any(matches(g, key) for g in grants) is seen
    assert with_alarm_grants(None) is None


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=60),
    hyst=st.floats(0, 20),
    acks=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_states_follow_a_reference_model(
    values: list[float], hyst: float, acks: list[bool]
) -> None:
    rule = AlarmRule("r", "#", "high", field="v", threshold=50, hysteresis=hyst)
    store, eng = engine(rule)
    key = alarm_topic("r", "d")
    cond, state = False, "normal"
    for i, v in enumerate(values):
        store.apply("d", {"v": v, "i": i}, float(i))
        cond = v > (50 - hyst if cond else 50)
        if cond and state in ("normal", "cleared_unacked"):
            state = "active_unacked"
        elif not cond and state == "active_unacked":
            state = "cleared_unacked"
        elif not cond and state == "active_acked":
            state = "normal"
        if acks[i] and eng.get(key) is not None:
            assert eng.ack([key], "op", f"a{i}", float(i)).ok
            state = {"active_unacked": "active_acked", "cleared_unacked": "normal"}.get(
                state, state
            )
        got = state_of(store, key)
        assert (got or "normal") == state
    active, unacked = eng.counts()
    assert active["warning"] == (state in ("active_unacked", "active_acked"))
    assert unacked["warning"] == (state in ("active_unacked", "cleared_unacked"))
