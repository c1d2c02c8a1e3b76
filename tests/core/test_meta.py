"""Device and field metadata, and stale-by-default in the store."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.meta import FieldMeta, Meta
from gateway.core.state import StateStore
from gateway.core.topics import RuleTable


def test_field_meta_first_matching_filter_wins_and_names_resolve() -> None:
    meta = Meta(
        [
            FieldMeta("plant/berlin/#", "temp", "Oven temperature", "°C", 1, 0, 300),
            FieldMeta("#", "temp", "Temperature", "°F"),
        ],
        name_field="label",
        names={"plant/berlin/oven1": "Oven 1"},
        groups={"site": 1, "line": 2},
    )
    assert meta.unit("plant/berlin/x", "temp") == "°C"
    assert meta.unit("plant/paris/x", "temp") == "°F"
    assert meta.field("plant/paris/x", "rpm") is None
    store = StateStore("e")
    store.apply("plant/berlin/oven1", {"temp": 1, "label": "ignored"}, 0)
    store.apply("plant/paris/oven2", {"temp": 1, "label": "Paris oven"}, 0)
    store.apply("plant/paris/oven3", {"temp": 1}, 0)
    doc = meta.document(store.states(), visible=lambda t: "paris" in t or "berlin" in t)
    assert doc["devices"]["plant/berlin/oven1"]["name"] == "Oven 1"
    assert doc["devices"]["plant/paris/oven2"]["name"] == "Paris oven"
    assert doc["devices"]["plant/paris/oven3"] == {
        "name": "plant/paris/oven3",
        "groups": {"site": "paris", "line": "oven3"},
    }
    assert doc["fields"][0] == {
        "filter": "plant/berlin/#",
        "field": "temp",
        "name": "Oven temperature",
        "unit": "°C",
        "decimals": 1,
        "min": 0,
        "max": 300,
    }
    hidden = meta.document(store.states(), visible=lambda t: "paris" in t)
    assert set(hidden["devices"]) == {"plant/paris/oven2", "plant/paris/oven3"}
    assert hidden["version"] == doc["version"] != Meta().version


def test_validation_names_the_key() -> None:
    with pytest.raises(ValueError, match="decimals"):
        FieldMeta("#", "t", decimals=-1)
    with pytest.raises(ValueError, match="min"):
        FieldMeta("#", "t", min=5, max=1)
    with pytest.raises(ValueError, match="filter"):
        FieldMeta("a/#/b", "t")
    with pytest.raises(ValueError, match=r"groups\.site"):
        Meta(groups={"site": -1})


def test_stale_after_the_learned_multiple_with_no_configuration() -> None:
    s = StateStore("e")
    for i in range(6):  # every 5 s, fields sent as two messages each time
        s.apply("dev", {"a": i}, 100.0 + 5 * i)
        s.apply("dev", {"b": i}, 100.01 + 5 * i)
    st_ = s.get("dev")
    assert st_ is not None and st_.interval == pytest.approx(5.0)
    last = 125.01
    assert s.sweep_stale(last + 14.9) == []
    assert s.sweep_stale(last + 15.1) == ["dev"]


def test_a_rule_wins_and_floor_and_ceiling_bound_the_learned_limit() -> None:
    s = StateStore("e", stale_after=RuleTable([("slow/#", 1000.0)]))
    for i in range(3):
        s.apply("slow/x", {"v": i}, 5.0 * i)
        s.apply("fast", {"v": i}, 0.6 * i)
    assert s.sweep_stale(10.0 + 999) == ["fast"]  # fast: floor of 5 s
    assert s.sweep_stale(10.0 + 1001) == ["slow/x"]
    one = StateStore("e")
    one.apply("once", {"v": 1}, 0.0)
    assert one.sweep_stale(1e9) == []  # one report: no interval learned


@settings(max_examples=100, deadline=None)
# gaps a hair over REPORT_GAP_S (0.5 s): at exactly 0.5, float rounding of the sums
# merges two reports into one by design, and the gap learned spans both
@given(gaps=st.lists(st.floats(0.501, 600), min_size=1, max_size=30))
def test_learned_limit_stays_within_floor_and_ceiling(gaps: list[float]) -> None:
    s = StateStore("e", stale_floor_s=5.0, stale_ceiling_s=3600.0)
    t = 0.0
    s.apply("d", {"v": 0}, t)
    for i, gap in enumerate(gaps):
        t += gap
        s.apply("d", {"v": i + 1}, t)
    st_ = s.get("d")
    assert st_ is not None
    limit = s.stale_limit(st_)
    assert limit is not None and 5.0 <= limit <= 3600.0
    assert min(gaps) - 1e-9 <= st_.interval <= max(gaps) + 1e-9  # an average of the gaps
    assert s.sweep_stale(t + limit * 0.999) == []
    assert s.sweep_stale(t + limit + 0.01) == ["d"]


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c/x", "c/y"]), st.floats(0.0, 20.0), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_sweep_by_deadlines_equals_a_full_scan(events: list[tuple[str, float, bool]]) -> None:
    """The deadline heap marks exactly what scanning every topic would mark."""
    s = StateStore("e", stale_after=RuleTable([("c/#", 7.0)]), stale_floor_s=2.0)
    now = 0.0
    for topic, gap, sweep in events:
        now += gap
        if sweep:
            expected = sorted(
                t.topic
                for t in s.states()
                if not t.stale
                and (limit := s.stale_limit(t)) is not None
                and t.seen_at + limit < now
            )
            assert sorted(s.sweep_stale(now)) == expected
        else:
            s.apply(topic, {"v": now}, now)


def test_the_deadline_heap_stays_bounded_by_the_topics_at_a_high_rate() -> None:
    """A 10 Hz fleet with jittery intervals (half of them shorter than the average)
    must not push a heap entry per message: the sweep pops at most 10,000 per call,
    and a heap growing faster than that held gigabytes after minutes."""
    import random

    rng = random.Random(7)
    s = StateStore("e")
    now = 0.0
    for _ in range(200):  # 20 s of 500 devices at 10 Hz, no sweep meanwhile
        now += 0.1
        for d in range(500):
            s.apply(f"site/dev{d}", {"v": rng.random()}, now + rng.uniform(-0.04, 0.04))
    assert len(s._deadlines) <= 2 * len(s)
    assert s.sweep_stale(now + 1.0) == []  # all reported within their limit
    assert len(s.sweep_stale(now + 60.0)) == 500  # and all go stale when they stop


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0.5, 40), min_size=2, max_size=30),
    rule=st.sampled_from([None, 3.0, 30.0]),
    floor=st.sampled_from([1.0, 5.0]),
)
def test_a_silent_device_is_marked_at_the_first_sweep_past_its_last_limit(
    gaps: list[float], rule: float | None, floor: float
) -> None:
    """Whatever the device's rhythm before (speeding up shortens its limit, slowing down
    lengthens it), it is marked stale by the first sweep later than its last report
    plus the limit in force then: never early, never a sweep late."""
    rules = RuleTable([("r/#", rule)] if rule is not None else [])
    s = StateStore("e", stale_after=rules, stale_floor_s=floor, stale_ceiling_s=3600.0)
    topic = "r/d" if rule is not None else "d"
    t, sweep = 0.0, 0.5
    s.apply(topic, {"v": 0}, t)
    for i, gap in enumerate(gaps):
        t += gap
        while sweep < t:
            s.sweep_stale(sweep)
            sweep += 0.5
        s.apply(topic, {"v": i + 1}, t)
    st_ = s.get(topic)
    assert st_ is not None
    limit = s.stale_limit(st_)
    assert limit is not None
    while True:
        marked = s.sweep_stale(sweep)
        if marked:
            break
        assert sweep <= t + limit, "not marked at the first sweep past the limit"
        sweep += 0.5
    assert marked == [topic]
    assert t + limit < sweep <= t + limit + 0.5 + 1e-9
