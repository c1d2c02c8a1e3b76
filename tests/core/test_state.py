import math

import pytest

from gateway.core.state import Deadband, Delta, InvalidUpdate, Snapshot, StateStore, UpdateMode
from gateway.core.topics import RuleTable


def store(**kw: object) -> StateStore:
    return StateStore("epoch-1", **kw)  # type: ignore[arg-type]


def test_seq_grows_by_one_per_accepted_change_and_versions_follow() -> None:
    s = store()
    assert s.apply("d/1", {"t": 20.0, "h": 40}, now=1.0, device_ts=0.5) == 1
    assert s.apply("d/1", {"t": 20.0}, now=2.0) == 0  # same value: no change
    assert s.apply("d/1", {"h": 41}, now=3.0) == 2
    st = s.get("d/1")
    assert st is not None
    assert (st.seq, st.fields, st.versions) == (2, {"t": 20.0, "h": 41}, {"t": 1, "h": 2})
    assert (st.device_ts, st.changed_at, st.seen_at) == (0.5, 3.0, 3.0)
    assert s.stats.unchanged == 1 and s.stats.changes == 2


def test_the_store_numbers_every_change_apart_from_its_metrics() -> None:
    """``changes`` orders every accepted change of every topic (the SSE resume id);
    the metrics' counters may be reset or replaced without moving it."""
    s = store()
    s.apply("a", {"v": 1}, now=1.0)
    s.apply("b", {"v": 1}, now=1.0)
    s.stats.changes = 0  # a metric, not the order
    s.apply("a", {"v": 2}, now=2.0)
    a, b = s.get("a"), s.get("b")
    assert a is not None and b is not None
    assert (s.changes, a.gseq, b.gseq) == (3, 3, 2)


def test_type_change_is_a_change_even_when_equal_in_python() -> None:
    s = store()
    s.apply("d", {"v": 1}, 0)
    assert s.apply("d", {"v": 1.0}, 0) == 2
    assert s.apply("d", {"v": True}, 0) == 3


def test_merge_null_removes_and_replace_removes_missing_fields() -> None:
    s = store()
    s.apply("d", {"a": 1, "b": 2, "c": 3}, 0)
    assert s.apply("d", {"a": None}, 0) == 2
    assert s.apply("d", {"zz": None}, 0) == 0  # removing an absent field is no change
    assert s.apply("d", {"b": 5}, 0, mode=UpdateMode.REPLACE) == 3
    st = s.get("d")
    assert st is not None
    assert st.fields == {"b": 5}
    assert st.tombstones == {"a": 2, "c": 3}


def test_tombstone_window_raises_the_floor_and_forces_snapshots() -> None:
    s = store(max_tombstones=2)
    s.apply("d", {"a": 1, "b": 2, "c": 3, "k": 0, "l": 0, "m": 0}, 0)  # seq 1
    s.apply("d", {"a": None}, 0)  # seq 2
    s.apply("d", {"b": None}, 0)  # seq 3
    s.apply("d", {"c": None}, 0)  # seq 4: forgets 'a', floor = 2
    st = s.get("d")
    assert st is not None and st.floor == 2 and list(st.tombstones) == ["b", "c"]
    below = s.diff("d", 1)
    assert isinstance(below, Snapshot) and below.reason == "window"
    at_floor = s.diff("d", 2)
    assert isinstance(at_floor, Delta) and at_floor.unset == ("b", "c")
    assert s.stats.snapshots_instead == {"window": 1}


def test_readding_a_removed_field_drops_its_tombstone() -> None:
    s = store()
    s.apply("d", {"a": 1, "b": 1}, 0)
    s.apply("d", {"a": None}, 0)
    s.apply("d", {"a": 2}, 0)
    d = s.diff("d", 1)
    assert isinstance(d, Delta) and d.set == {"a": 2} and d.unset == ()


def test_absolute_relative_and_wildcard_deadbands() -> None:
    bands = RuleTable([("site/+/press", {"temp": Deadband(abs=0.5), "*": Deadband(rel=0.1)})])
    s = store(deadbands=bands)
    s.apply("site/a/press", {"temp": 20.0, "rpm": 1000, "mode": "run"}, 0)
    assert s.apply("site/a/press", {"temp": 20.4, "rpm": 1099}, 1) == 0
    assert s.stats.deadband_suppressed == 2
    # drift accumulates against the last accepted value, so it gets through
    assert s.apply("site/a/press", {"temp": 20.5}, 2) == 2
    assert s.apply("site/a/press", {"rpm": 1100}, 3) == 3
    # non-numeric fields and other topics are not deadbanded
    assert s.apply("site/a/press", {"mode": "stop"}, 4) == 4
    s.apply("site/a/other", {"temp": 1.0}, 0)
    assert s.apply("site/a/other", {"temp": 1.01}, 0) == 2


def test_a_suppressed_message_still_counts_as_seen() -> None:
    s = store(deadbands=RuleTable([("#", {"*": Deadband(abs=1)})]))
    s.apply("d", {"t": 1.0}, 10.0)
    s.apply("d", {"t": 1.5}, 20.0)
    st = s.get("d")
    assert st is not None and st.seen_at == 20.0 and st.changed_at == 10.0


@pytest.mark.parametrize(
    ("values", "ts", "reason"),
    [
        ({"": 1}, None, "bad_field"),
        ({"x" * 200: 1}, None, "bad_field"),
        ({"v": math.nan}, None, "bad_value"),
        ({"v": math.inf}, None, "bad_value"),
        ({"v": 2**70}, None, "bad_value"),
        ({"v": object()}, None, "bad_value"),
        ({"v": {"k": [math.nan]}}, None, "bad_value"),
        ({"v": {1: 2}}, None, "bad_value"),
        ({"v": 1}, "yesterday", "bad_timestamp"),
        ({"v": 1}, math.nan, "bad_timestamp"),
        ({f"f{i}": i for i in range(5)}, None, "field_limit"),
    ],
)
def test_invalid_updates_change_nothing_and_are_counted(
    values: dict[str, object], ts: object, reason: str
) -> None:
    s = store(max_fields=4)
    s.apply("d", {"keep": 1}, 0)
    with pytest.raises(InvalidUpdate) as err:
        s.apply("d", values, 1, device_ts=ts)  # type: ignore[arg-type]
    assert err.value.reason == reason
    st = s.get("d")
    assert st is not None and st.fields == {"keep": 1} and st.seq == 1
    assert s.stats.rejected == {reason: 1}
    # a refused first message does not create the topic either
    with pytest.raises(InvalidUpdate):
        s.apply("new", values, 1, device_ts=ts)  # type: ignore[arg-type]
    assert "new" not in s


def test_topic_validation_and_limit() -> None:
    s = store(max_topics=1, max_topic_bytes=8)
    with pytest.raises(InvalidUpdate, match="wildcard"):
        s.apply("a/#", {"v": 1}, 0)
    s.apply("a", {"v": 1}, 0)
    with pytest.raises(InvalidUpdate) as err:
        s.apply("b", {"v": 1}, 0)
    assert err.value.reason == "topic_limit"
    assert s.stats.rejected == {"bad_topic": 1, "topic_limit": 1}


def test_presence_and_staleness_are_versioned_changes() -> None:
    s = store(stale_after=RuleTable([("dev/#", 5.0)]))
    s.apply("dev/1", {"t": 1}, now=100.0)
    s.apply("other", {"t": 1}, now=100.0)
    assert s.sweep_stale(104.0) == []
    assert s.sweep_stale(106.0) == ["dev/1"]  # 'other' has no stale rule
    assert s.sweep_stale(200.0) == []  # already stale: no second bump
    st = s.get("dev/1")
    assert st is not None and st.stale and st.seq == 2 and st.meta_seq == 2
    assert st.changed_at == 100.0  # staleness is not a data change
    d = s.diff("dev/1", 1)
    assert isinstance(d, Delta) and d.meta and d.stale and d.set == {}
    # any message, even an unchanged value, makes it fresh again
    assert s.apply("dev/1", {"t": 1}, now=201.0) == 3
    st = s.get("dev/1")
    assert st is not None and not st.stale
    assert s.set_presence("dev/1", False, 202.0) == 4
    assert s.set_presence("dev/1", False, 203.0) == 0
    assert s.set_presence("dev/1", True, 204.0) == 5
    d = s.diff("dev/1", 3)
    assert isinstance(d, Delta) and d.meta and d.online is True and d.set == {}
    d = s.diff("dev/1", 5)
    assert d is None


def test_a_retained_message_that_tells_nothing_new_is_not_the_device_speaking() -> None:
    """The broker sends its stored (retained) messages on every subscribe: a device
    that died with ``online`` retained looked alive after every gateway restart, its
    deadline re-armed and its ``rx`` rewritten (found by an outside check). Such a
    message changes nothing unless it changes a field or the presence."""
    s = store(stale_after=RuleTable([("dev/#", 5.0)]))
    s.apply("dev/1", {"t": 1.0, "mode": "run"}, now=100.0)
    assert s.set_presence("dev/1", True, 100.0) == 2
    assert s.sweep_stale(106.0) == ["dev/1"]
    seq = s.get("dev/1").seq  # type: ignore[union-attr]
    # the broker's copies of what the store holds: nothing happens, it stays stale
    assert s.set_presence("dev/1", True, 107.0, retained=True) == 0
    assert s.apply("dev/1", {"t": 1.0}, 107.0, retained=True) == 0
    assert s.apply("dev/1", {"mode": "run", "t": 1.0}, 107.0, retained=True) == 0
    st = s.get("dev/1")
    assert st is not None and st.stale and st.seq == seq
    assert (st.seen_at, st.changed_at) == (100.0, 100.0)
    assert s.stats.retained_old == 3
    # live, the same message is the device speaking
    assert s.apply("dev/1", {"t": 1.0}, 108.0) == seq + 1
    assert not s.get("dev/1").stale  # type: ignore[union-attr]
    assert s.sweep_stale(114.0) == ["dev/1"]
    # a retained message that changes something is news: the device spoke meanwhile
    assert s.apply("dev/1", {"t": 2.0}, 115.0, retained=True) == seq + 3
    st = s.get("dev/1")
    assert st is not None and not st.stale and st.seen_at == 115.0 and st.fields["t"] == 2.0
    assert s.set_presence("dev/1", False, 116.0, retained=True) == seq + 4
    # a topic the store does not hold yet takes a retained message as any message
    assert s.apply("dev/2", {"t": 5.0}, 117.0, retained=True) == 1
    assert s.set_presence("dev/3", True, 117.0, retained=True) == 1


def test_a_retained_value_within_a_deadband_is_old_news() -> None:
    s = store(deadbands=RuleTable([("#", {"t": Deadband(abs=1)})]))
    s.apply("d", {"t": 1.0}, 10.0)
    assert s.apply("d", {"t": 1.5}, 20.0, retained=True) == 0
    assert s.get("d").seen_at == 10.0  # type: ignore[union-attr]
    assert s.apply("d", {"t": 1.5, "x": None}, 20.0, retained=True) == 0  # nothing to remove
    assert s.apply("d", {"x": 1}, 20.0, mode=UpdateMode.REPLACE, retained=True) == 2


def test_mark_all_stale_and_recover() -> None:
    s = store()
    for i in range(3):
        s.apply(f"d/{i}", {"v": i}, 0)
    s.drain_changed()
    assert s.mark_all_stale(10.0) == 3
    assert sorted(s.drain_changed()) == ["d/0", "d/1", "d/2"]
    assert s.mark_all_stale(11.0) == 0


def test_marking_all_stale_goes_in_slices_and_spares_a_topic_that_spoke_meanwhile() -> None:
    s = store()
    for i in range(25):
        s.apply(f"d/{i:02}", {"v": i}, 0)
    s.drain_changed()
    steps = s.mark_all_stale_steps(10.0, batch=10)
    assert next(steps) == 10  # one slice: the caller checkpoints here
    s.apply("d/24", {"v": 99}, 10.5)  # its device spoke between two slices
    assert list(steps) == [10, 4]
    assert s.get("d/24").stale is False  # type: ignore[union-attr]
    assert s.stats.stale_marked == 24


def test_diff_decisions() -> None:
    s = store()
    assert s.diff("nope", None) is None
    s.apply("d", {"a": 1, "b": 2, "c": 3}, 0, device_ts=7.0)
    s.apply("d", {"a": 9}, 1)
    snap = s.diff("d", None)
    assert (
        isinstance(snap, Snapshot) and snap.reason == "" and snap.fields == {"a": 9, "b": 2, "c": 3}
    )
    d = s.diff("d", 1)
    assert isinstance(d, Delta) and (d.base, d.seq, d.set, d.unset, d.meta) == (
        1,
        2,
        {"a": 9},
        (),
        False,
    )
    assert d.ts == 7.0 and d.rx == 1
    assert s.diff("d", 2) is None
    ahead = s.diff("d", 99)
    assert isinstance(ahead, Snapshot) and ahead.reason == "ahead"
    s.apply("d", {"a": None, "b": None, "c": 4}, 2)
    big = s.diff("d", 1)  # 1 set + 2 unset > 1 field: the snapshot is smaller
    assert isinstance(big, Snapshot) and big.reason == "size"


def test_drain_changed_is_ordered_and_deduplicated() -> None:
    s = store()
    s.apply("b", {"v": 1}, 0)
    s.apply("a", {"v": 1}, 0)
    s.apply("b", {"v": 2}, 0)
    assert s.drain_changed() == ["b", "a"]
    assert s.drain_changed() == []


def test_deadband_validation() -> None:
    with pytest.raises(ValueError, match="abs"):
        Deadband(abs=-1)
    with pytest.raises(ValueError, match="rel"):
        Deadband(rel=math.inf)
    assert Deadband(abs=1, rel=0.5).suppresses(10.0, 14.9)
    assert not Deadband(abs=1, rel=0.5).suppresses(10.0, 15.0)
