"""Bounded hub work (issue 14): rates snap to steps and bad ones are refused, one
connection's streams are capped, group creation and ticks run in bounded slices, and
screens joining one stream in the same tick share one join snapshot."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.hub import FRAGMENT_STEP, Hub, HubConfig
from gateway.core.mirror import Mirror
from gateway.core.protocol import (
    Ack,
    Error,
    ProtocolError,
    Resume,
    Snapshot,
    Subscribe,
    decode_client,
    decode_server,
)
from gateway.core.rates import RateError, RateSteps
from gateway.core.state import StateStore

from .helpers import deliver, expected_view, mirror_view


def make(topics: int = 0, **cfg: object) -> tuple[StateStore, Hub]:
    store = StateStore("e1")
    for i in range(topics):
        store.apply(f"site{i % 10}/line{i % 7}/d{i}", {"v": i}, 0.0)
    return store, Hub(store, HubConfig(**cfg))  # type: ignore[arg-type]


# -- rates ----------------------------------------------------------------------------


def test_the_default_rate_steps() -> None:
    assert RateSteps(20, 0.1).steps == (20, 10, 5, 2, 1, 0.5, 0.2, 0.1)
    assert RateSteps(30, 1).steps == (30, 10, 5, 2, 1)  # 20 Hz is not a whole period


@given(rate=st.floats(min_value=0.1, max_value=1e300))
def test_a_rate_snaps_down_to_a_step_at_most_2_5_times_slower(rate: float) -> None:
    steps = RateSteps(20, 0.1)
    got = steps.snap(rate)
    assert got in steps.steps
    assert got <= max(rate, 0.1) * (1 + 1e-9) or got == 20
    assert got * 2.5 >= min(rate, 20) * (1 - 1e-9)
    assert steps.every(got) * got == pytest.approx(20)


@given(rate=st.one_of(st.floats(max_value=0.0999), st.sampled_from([math.inf, math.nan])))
def test_a_rate_below_the_minimum_or_not_finite_is_refused(rate: float) -> None:
    with pytest.raises(RateError):
        RateSteps(20, 0.1).snap(rate)


@pytest.mark.parametrize("rate", [5e-324, 1e-320, 0.01])
def test_a_tiny_rate_is_a_bad_rate_error_not_a_crash(rate: float) -> None:
    _store, hub = make(3)
    sub = hub.connect()
    reply = hub.subscribe(sub, Subscribe("s", ("#",), rate))
    assert isinstance(reply, Error) and reply.code == "bad_rate" and reply.ref == "s"
    assert hub.groups == 0 and not sub.subs
    ok = hub.subscribe(sub, Subscribe("s", ("#",), 0.1))
    assert isinstance(ok, Ack) and ok.rate_hz == 0.1


def test_zero_and_negative_rates_are_bad_rate_at_decode() -> None:
    for rate in ("0", "-1", "1e999"):
        raw = '{"type":"subscribe","id":"s","filters":["#"],"rate_hz":' + rate + "}"
        with pytest.raises(ProtocolError) as err:
            decode_client(raw)
        assert err.value.code in ("bad_rate", "bad_json")  # 1e999 is not JSON to orjson


def test_nearby_rates_share_one_group() -> None:
    _store, hub = make(5)
    rates = [10, 9.5, 7, 6, 5, 4.9, 3, 2]
    acks = [hub.subscribe(hub.connect(), Subscribe("s", ("#",), r)) for r in rates]
    assert [a.rate_hz for a in acks if isinstance(a, Ack)] == [10, 5, 5, 5, 5, 2, 2, 2]
    assert hub.groups == 3


# -- per-connection caps --------------------------------------------------------------


def test_filters_per_connection_are_capped_and_a_refusal_changes_nothing() -> None:
    _store, hub = make(5, max_filters_per_connection=4)
    sub = hub.connect()
    assert isinstance(hub.subscribe(sub, Subscribe("a", ("x/1", "x/2", "x/3"))), Ack)
    reply = hub.subscribe(sub, Subscribe("b", ("y/1", "y/2")))
    assert isinstance(reply, Error) and reply.code == "too_many_filters"
    assert list(sub.subs) == ["a"] and hub.groups == 3
    assert isinstance(hub.subscribe(sub, Subscribe("b", ("y/1",))), Ack)


def test_distinct_streams_per_connection_are_capped() -> None:
    _store, hub = make(5, max_groups_per_connection=3)
    sub = hub.connect()
    for i, rate in enumerate([10, 5, 2]):
        assert isinstance(hub.subscribe(sub, Subscribe(f"s{i}", ("#",), rate)), Ack)
    # the same filter at a rate that snaps to a held step joins no new stream
    assert isinstance(hub.subscribe(sub, Subscribe("same", ("#",), 6)), Ack)
    reply = hub.subscribe(sub, Subscribe("new", ("#",), 1))
    assert isinstance(reply, Error) and reply.code == "too_many_groups"
    assert hub.groups == 3


# -- group creation in slices ---------------------------------------------------------


def test_a_new_group_visits_only_the_matching_topics_and_builds_in_slices() -> None:
    store, hub = make(20_000, slice_items=500)
    sub = hub.connect()
    assert isinstance(hub.subscribe(sub, Subscribe("one", ("site3/line2/+",))), Ack)
    (group,) = hub._groups.values()
    assert group.building is None  # 286 matching topics: built at once
    assert len(group.sent) == len([t for t in store.topics() if t.startswith("site3/line2/")])
    other = hub.connect()
    assert isinstance(hub.subscribe(other, Subscribe("all", ("#",))), Ack)
    everything = hub._groups[next(k for k in hub._groups if k.filter == "#")]
    assert len(everything.sent) <= 500  # the subscribe did one slice, not 20,000 topics
    assert not hub.take(other, 0.0)  # joins once the group is complete
    assert not hub.idle
    slices = list(hub.tick_steps(0.05))
    assert len(slices) >= 20_000 // 500
    mirror = Mirror()
    for _ in range(3):
        deliver(hub, other, mirror)
        hub.tick(0.1)
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_subscribes_between_two_ticks_share_one_slice_of_building() -> None:
    """Subscribes read together (one step of the shell) must not each build a slice:
    32 of them, each making a new group of 20,000 topics, held the loop 22 ms."""
    store, hub = make(5_000, slice_items=500)
    sub = hub.connect()
    for i in range(8):  # 8 distinct groups: '#' at 8 rate steps (20 Hz down to 0.1 Hz)
        reply = hub.subscribe(sub, Subscribe(f"s{i}", ("#",), hub.rates.steps[i]))
        assert isinstance(reply, Ack)
    assert hub.groups == 8
    assert sum(len(g.sent) for g in hub._groups.values()) <= 500
    list(hub.tick_steps(0.05))  # the tick builds the rest in its slices, and refills
    assert all(g.building is None for g in hub._groups.values())
    assert isinstance(hub.subscribe(sub, Subscribe("line", ("site3/line2/+",), 20)), Ack)
    line = next(g for g in hub._groups.values() if g.key.filter == "site3/line2/+")
    assert line.building is None  # 71 topics: built at once again after the tick
    mirror = Mirror()
    for _ in range(4):
        deliver(hub, sub, mirror)
        hub.tick(0.1)
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_a_large_join_snapshot_is_packed_slice_by_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its frames are made as its fragments are read, not all in the step that reads
    the last of them (20,000 fragments packed at once: one step of ~15 ms)."""
    import gateway.core.hub as hub_module

    made: list[int] = []
    encode = hub_module.encode_batch

    def counted(frags: list[bytes]) -> bytes:
        made.append(len(frags))
        return encode(frags)

    store, hub = make(3_000, slice_items=64, max_frame_bytes=2048)
    monkeypatch.setattr(hub_module, "encode_batch", counted)
    sub = hub.connect()
    hub.subscribe(sub, Subscribe("s", ("#",)))
    per_slice = []
    for _ in hub.tick_steps(0.05):
        per_slice.append(len(made))
        made.clear()
    frames = hub.take(sub, 0.05)
    assert len(frames) == sum(per_slice) > 150
    assert max(per_slice) <= 5  # 64 fragments of ~116 bytes a slice: 4 frames of 2 KiB
    assert all(len(f) <= 2048 for f in frames)
    mirror = Mirror()
    for frame in frames:
        for msg in decode_server(frame):
            mirror.apply(msg)  # type: ignore[arg-type]
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_a_tick_with_100000_changed_topics_runs_in_bounded_slices() -> None:
    store, hub = make(0, slice_items=1000)
    sub = hub.connect()
    hub.subscribe(sub, Subscribe("s", ("#",), 20))
    mirror = Mirror()
    deliver(hub, sub, mirror)  # joined (nothing yet)
    for i in range(100_000):
        store.apply(f"t/{i % 100}/{i}", {"v": i}, 1.0)
    batches = list(hub.tick_steps(1.0))
    assert len(batches) >= 100_000 // 1000
    assert sum(len(b) for b in batches) == 1  # woken once
    deliver(hub, sub, mirror)
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_with_a_clock_a_slice_also_ends_when_its_time_is_spent() -> None:
    """Units of work differ in cost (a fragment of many fields against a routed
    topic): given the shell's clock, a slice ends at ``slice_seconds`` even with most
    of its units left, and what the screens receive is the same."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # every look at the clock: 1 ms of work (a slice is 1 ms)
        return now[0]

    results = []
    for timed in (False, True):
        store = StateStore("e1")
        hub = Hub(store, HubConfig(slice_items=1000), clock=clock if timed else None)
        sub = hub.connect()
        hub.subscribe(sub, Subscribe("s", ("#",), 20))
        mirror = Mirror()
        deliver(hub, sub, mirror)
        for i in range(3000):
            store.apply(f"t/{i % 10}/{i}", {"v": i, "w": -i}, 1.0)
        batches = list(hub.tick_steps(1.0))
        deliver(hub, sub, mirror)
        assert mirror_view(mirror) == expected_view(store, ["#"])
        results.append(len(batches))
    by_count, by_time = results
    assert by_count <= 3000 * 2 // 1000 + 2  # routing and fragments: ~6 slices of 1,000
    # a group's tick looks at the clock every FRAGMENT_STEP topics: a slice or two each
    assert by_time >= 3000 // (2 * FRAGMENT_STEP)


def test_a_tick_cannot_start_while_one_is_suspended() -> None:
    store, hub = make(50, slice_items=10)
    hub.subscribe(hub.connect(), Subscribe("s", ("#",)))
    for i in range(50):
        store.apply(f"x/{i}", {"v": 1}, 1.0)
    steps = hub.tick_steps(1.0)
    next(steps)
    with pytest.raises(RuntimeError):
        hub.tick(1.0)
    list(steps)
    hub.tick(1.05)


# -- shared join snapshots ------------------------------------------------------------


def test_screens_joining_in_the_same_tick_share_one_join_snapshot() -> None:
    store, hub = make(3_000, slice_items=1000, max_frame_bytes=64 * 1024)
    subs = [hub.connect() for _ in range(50)]
    for sub in subs:
        hub.subscribe(sub, Subscribe("s", ("#",)))
    assert not any(hub.take(s, 0.0) for s in subs)  # large: built by the next tick
    woken = hub.tick(0.05)
    assert set(woken) == set(subs)
    frames = [hub.take(s, 0.05) for s in subs]
    assert all(f is frames[0] or f == frames[0] for f in frames)
    first = frames[0]
    assert len(first) > 1  # split at max_frame_bytes
    # the very same bytes objects: the shell frames and deflates them once
    assert all(a is b for f in frames for a, b in zip(f, first, strict=True))
    assert hub.stats.join_snapshots == 1 and hub.stats.personal_fragments == 0
    mirror = Mirror()
    for frame in first:
        for msg in decode_server(frame):
            mirror.apply(msg)  # type: ignore[arg-type]
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_a_join_after_a_few_ticks_shares_the_snapshot_and_the_ticks_since() -> None:
    store, hub = make(10)
    a, b, c = hub.connect(), hub.connect(), hub.connect()
    hub.subscribe(a, Subscribe("s", ("#",)))
    first = hub.take(a, 0.0)
    store.apply("site0/line0/d0", {"v": 99}, 1.0)
    hub.tick(0.05)
    tick = hub.take(a, 0.05)
    hub.subscribe(b, Subscribe("s", ("#",)))
    second = hub.take(b, 0.05)
    # the same objects: no second snapshot built, nothing encoded for b alone
    assert [id(f) for f in second] == [id(f) for f in (*first, *tick)]
    assert hub.stats.join_snapshots == 1 and hub.stats.personal_fragments == 0
    mirror = Mirror()
    for frame in second:
        for msg in decode_server(frame):
            mirror.apply(msg)  # type: ignore[arg-type]
    deliver(hub, b, mirror)  # nothing more
    assert mirror_view(mirror) == expected_view(store, ["#"])
    # once the ticks since carry more than half as many items as the group has
    # topics, a joiner gets a new snapshot instead
    for topic in list(store.topics())[:6]:
        store.apply(topic, {"v": -1}, 2.0)
    hub.tick(0.1)
    hub.tick(0.15)  # the group (10 Hz) ticks every other hub tick (20 Hz)
    hub.subscribe(c, Subscribe("s", ("#",)))
    third = hub.take(c, 0.15)
    assert hub.stats.join_snapshots == 2 and not set(map(id, third)) & set(map(id, first))
    mirror = Mirror()
    deliver(hub, c, mirror)
    for frame in third:
        for msg in decode_server(frame):
            mirror.apply(msg)  # type: ignore[arg-type]
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_a_resume_after_most_topics_changed_takes_the_shared_snapshot_not_deltas() -> None:
    """A screen resuming a large stream whose topics mostly changed meanwhile gets the
    stream's shared join snapshot (built and compressed once for all, at most about
    twice the bytes of the deltas), not one delta per topic built in its own take (15
    to 18 ms at 10,000 topics); one that missed little still gets only its deltas."""
    store, hub = make(3_000, slice_items=1000)
    first = hub.connect()
    hub.subscribe(first, Subscribe("s", ("#",)))
    hub.tick(0.05)
    held = Mirror()
    deliver(hub, first, held, 0.05)
    positions = {t: store.get(t).seq for t in store.topics()}  # type: ignore[union-attr]
    few, most = list(store.topics())[:40], list(store.topics())[40:2_500]
    for topic in few:
        store.apply(topic, {"v": -1}, 1.0)
    hub.tick(0.1)
    hub.tick(0.15)  # the stream (10 Hz) ticks every other hub tick (20 Hz)
    little = hub.connect()
    hub.resume(little, Resume(store.epoch, dict(positions)))
    hub.subscribe(little, Subscribe("s", ("#",)))
    frames = hub.take(little, 0.15)
    sent = [m for f in frames for m in decode_server(f)]
    assert len(sent) == 40 and not any(isinstance(m, Snapshot) for m in sent)
    assert hub.stats.resume_snapshots == 0
    for topic in most:
        store.apply(topic, {"v": -2}, 2.0)
    hub.tick(0.2)
    hub.tick(0.25)
    joiner, resumer = hub.connect(), hub.connect()
    hub.subscribe(joiner, Subscribe("s", ("#",)))
    hub.resume(resumer, Resume(store.epoch, dict(positions)))
    hub.subscribe(resumer, Subscribe("s", ("#",)))
    assert not hub.take(joiner, 0.25) and not hub.take(resumer, 0.25)
    hub.tick(0.3)  # a large stream's join snapshot is built by the tick
    joined, resumed = hub.take(joiner, 0.3), hub.take(resumer, 0.3)
    assert hub.stats.resume_snapshots == 1 and hub.stats.personal_fragments == 40
    assert all(a is b for a, b in zip(joined, resumed, strict=True))  # the same bytes
    mirror = held
    for frame in resumed:
        for msg in decode_server(frame):
            mirror.apply(msg)  # type: ignore[arg-type]
    assert mirror_view(mirror) == expected_view(store, ["#"])


def test_a_member_far_behind_rejoins_from_the_shared_snapshot_not_personal_deltas() -> None:
    store, hub = make(3_000, slice_items=200)
    a, b = hub.connect(), hub.connect()
    ma, mb = Mirror(), Mirror()
    for sub in (a, b):
        hub.subscribe(sub, Subscribe("s", ("#",), 20))
    hub.tick(0.0)  # builds the group and its join snapshot
    deliver(hub, a, ma)
    deliver(hub, b, mb)
    topics = list(store.topics())
    for n in range(1, 4):  # three ticks of 1,000 changes; b reads none of them
        for topic in topics[:1000]:
            store.apply(topic, {"v": -n}, float(n))
        hub.tick(n * 0.05)
        deliver(hub, a, ma)
    fragments = hub.stats.personal_fragments
    assert not hub.take(b, 0.2)  # 3,000 missed items: it rejoins (snapshot built next tick)
    hub.tick(0.25)
    deliver(hub, b, mb)
    assert hub.stats.personal_fragments == fragments  # nothing coalesced for b alone
    assert hub.stats.lag_snapshots == 1
    assert mirror_view(mb) == expected_view(store, ["#"]) == mirror_view(ma)
