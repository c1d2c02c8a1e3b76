"""Chart history: bucketed min/max/last rings with a global cap."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.history import History, HistoryConfig, HistoryMismatch
from gateway.core.state import TopicState


def test_buckets_keep_min_max_last_and_gaps_are_none() -> None:
    h = History(HistoryConfig(window_s=10, resolution_s=1))
    h.record("d", {"t": 5.0, "on": True, "s": "x"}, 100.2)
    h.record("d", {"t": 3.0}, 100.7)
    h.record("d", {"t": 4.0}, 100.9)
    h.record("d", {"t": 9.0}, 103.1)
    q = h.query("d", "t", 5, 103.5)
    assert q is not None
    assert q["start"] == 99.0 and q["step"] == 1.0
    assert q["min"] == [None, 3.0, None, None, 9.0]
    assert q["max"] == [None, 5.0, None, None, 9.0]
    assert q["last"] == [None, 4.0, None, None, 9.0]
    assert h.fields("d") == ["t"]  # booleans and strings are not history
    later = h.query("d", "t", 600, 200.0)
    assert later is not None and len(later["last"]) == 10 and set(later["last"]) == {None}


def test_alarm_topics_are_not_recorded() -> None:
    h = History()
    h.record("$alarms/hot/d", {"raised_value": 3.0}, 1.0)
    assert h.topics() == [] and h.stats.series == 0


def test_cap_refuses_new_series_and_evicts_only_idle_ones() -> None:
    cfg = HistoryConfig(window_s=10, resolution_s=1, max_bytes=0)
    probe = History(cfg).series_bytes
    h = History(HistoryConfig(window_s=10, resolution_s=1, max_bytes=2 * probe))
    h.record("a", {"x": 1}, 0.0)
    h.record("b", {"x": 1}, 0.0)
    h.record("c", {"x": 1}, 5.0)  # a and b still inside the window: refused
    assert h.stats.refused == 1 and h.topics() == ["a", "b"]
    h.record("b", {"x": 2}, 12.0)
    h.record("c", {"x": 1}, 12.0)  # a has left the window: evicted for c
    assert h.stats.evicted == 1 and sorted(h.topics()) == ["b", "c"]
    assert h.stats.bytes <= 2 * probe


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="resolution_s"):
        HistoryConfig(resolution_s=0)
    with pytest.raises(ValueError, match="window_s"):
        HistoryConfig(window_s=0.5, resolution_s=1)


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.floats(0, 50), st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=1,
        max_size=80,
    )
)
def test_matches_a_reference_over_the_window(samples: list[tuple[float, float]]) -> None:
    h = History(HistoryConfig(window_s=20, resolution_s=2))
    samples.sort(key=lambda s: s[0])
    for t, v in samples:
        h.record("d", {"v": v}, t)
    now = samples[-1][0]
    q = h.query("d", "v", 20, now)
    assert q is not None
    ref: dict[int, list[float]] = {}
    for t, v in samples:
        ref.setdefault(math.floor(t / 2), []).append(v)
    first = round(q["start"] / 2)
    for i, last in enumerate(q["last"]):
        vals = ref.get(first + i)
        if vals is None:
            assert last is None and q["min"][i] is None
            continue
        assert last == pytest.approx(vals[-1], rel=1e-6, abs=1e-30)
        assert q["min"][i] == pytest.approx(min(vals), rel=1e-6, abs=1e-30)
        assert q["max"][i] == pytest.approx(max(vals), rel=1e-6, abs=1e-30)


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.floats(0, 80), st.integers(0, 2), st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=1,
        max_size=120,
    )
)
def test_the_ingest_path_records_what_record_does(samples: list[tuple[float, int, float]]) -> None:
    """observe() (the store's hook, with the next-bucket case written out) and record()
    keep the same rings and the same eviction order, whatever the times (gaps, the
    same bucket, older buckets, wrap-arounds) and whichever fields change."""
    cfg = HistoryConfig(window_s=20, resolution_s=2)
    by_record, by_observe = History(cfg), History(cfg)
    state = TopicState("d")
    # mostly in time order (as received), with the later half's order kept as drawn
    half = len(samples) // 2
    samples = sorted(samples[:half]) + samples[half:]
    for t, field, v in samples:
        name = f"f{field}"
        by_record.record("d", {name: v}, t)
        state.seq += 1
        state.fields[name] = v
        state.versions[name] = state.seq
        by_observe.observe(state, t)
    assert b"".join(by_observe.export()) == b"".join(by_record.export())
    assert by_observe.stats.samples == by_record.stats.samples == len(samples)


def filled(cfg: HistoryConfig, n: int = 30) -> History:
    h = History(cfg)
    for i in range(n):
        for k in range(25):  # rings that wrapped around
            h.record(f"dev/{i}", {"t": i + k * 0.5, "h": -k, "s": "x"}, 100.0 + k * 0.7 + i % 3)
    return h


def restored(payload: bytes, cfg: HistoryConfig, batch: int = 7) -> tuple[History, list[int]]:
    h = History(cfg)
    return h, list(h.restore(memoryview(payload), batch))


def test_export_and_restore_keep_every_ring_and_the_eviction_order() -> None:
    cfg = HistoryConfig(window_s=10, resolution_s=1)
    old = filled(cfg)
    chunks = list(old.export(batch=4))
    assert len(chunks) == 1 + math.ceil(60 / 4)  # the header, then bounded chunks
    new, steps = restored(b"".join(chunks), cfg)
    assert steps == [7, 14, 21, 28, 35, 42, 49, 56, 60]
    assert list(new._series) == list(old._series)  # least recently updated first
    assert (new.stats.series, new.stats.bytes) == (old.stats.series, old.stats.bytes)
    for topic in old.topics():
        assert new.fields(topic) == old.fields(topic)
        for name in old.fields(topic):
            for now in (110.0, 125.0, 130.0):
                assert new.query(topic, name, 60, now) == old.query(topic, name, 60, now)
    new.record("dev/0", {"t": 1.5}, 140.0)  # a restored ring goes on recording
    assert new.query("dev/0", "t", 1, 140.0)["last"] == [1.5]  # type: ignore[index]


def test_restore_refuses_rings_of_another_shape_and_malformed_payloads() -> None:
    payload = b"".join(filled(HistoryConfig(window_s=10, resolution_s=1), 3).export())
    for other in (HistoryConfig(window_s=20, resolution_s=1), HistoryConfig(10, 0.5)):
        with pytest.raises(HistoryMismatch, match=r"\[history\] changed"):
            restored(payload, other)
    cfg = HistoryConfig(window_s=10, resolution_s=1)
    for bad in (b"", b"\x03\x00\x00\x00[1]", payload[:-5], payload + b'\x07\x00\x00\x00["t",1]'):
        with pytest.raises(HistoryMismatch):
            restored(bad, cfg)
    probe = History(cfg).series_bytes
    capped, _ = restored(payload, HistoryConfig(window_s=10, resolution_s=1, max_bytes=2 * probe))
    assert (capped.stats.series, capped.stats.refused) == (2, 4)  # the cap holds
