import pytest

from gateway.core.hub import Hub, HubConfig, Subscriber
from gateway.core.mirror import Mirror
from gateway.core.protocol import Ack, Error, Resume, Subscribe, Unsubscribe, decode_server
from gateway.core.state import Delta, Snapshot, StateStore

from .helpers import deliver, expected_view, mirror_view


def make(**cfg: object) -> tuple[StateStore, Hub]:
    store = StateStore("e1")
    return store, Hub(store, HubConfig(**cfg))  # type: ignore[arg-type]


def fill(store: StateStore, n: int = 3, value: int = 0) -> None:
    for i in range(n):
        store.apply(f"site/a/d{i}", {"v": value, "i": i}, 0.0)
    store.apply("site/b/d0", {"v": value}, 0.0)


def test_snapshot_then_deltas_rebuild_the_gateway_state() -> None:
    store, hub = make()
    fill(store)
    sub = hub.connect()
    ack = hub.subscribe(sub, Subscribe("s", ("site/a/#",)))
    assert ack == Ack("subscribe", "s", ("site/a/#",), 10.0)
    mirror = Mirror()
    assert deliver(hub, sub, mirror) == ["applied"] * 3
    assert mirror_view(mirror) == expected_view(store, ["site/a/#"])
    store.apply("site/a/d1", {"v": 5}, 1.0)
    store.apply("site/b/d0", {"v": 5}, 1.0)  # not subscribed
    store.apply("site/a/new", {"v": 1}, 1.0)
    assert hub.tick(0.05) == [sub]
    frames = hub.take(sub, 0.05)
    kinds = [type(m).__name__ for f in frames for m in decode_server(f)]
    assert sorted(kinds) == ["Delta", "Snapshot"]  # the new topic arrives as a snapshot
    for f in frames:
        for m in decode_server(f):
            mirror.apply(m)  # type: ignore[arg-type]
    assert mirror_view(mirror) == expected_view(store, ["site/a/#"])


def test_in_sync_subscribers_share_the_same_frame_bytes() -> None:
    store, hub = make()
    fill(store)
    subs = [hub.connect() for _ in range(5)]
    for s in subs:
        hub.subscribe(s, Subscribe("s", ("site/#",)))
        hub.take(s, 0)
    store.apply("site/a/d0", {"v": 9}, 1.0)
    assert set(hub.tick(0.05)) == set(subs)
    frames = [hub.take(s, 0.05) for s in subs]
    assert all(f[0] is frames[0][0] for f in frames)  # one encode, same object
    assert hub.stats.shared_frames == 5
    assert hub.groups == 1


def test_a_screen_that_changes_its_subscriptions_gets_the_new_streams_frames() -> None:
    """take()'s fast path remembers a screen's one member; subscribing, unsubscribing
    and resubscribing must each leave it serving what the screen now holds."""
    store, hub = make(tick_hz=10)
    fill(store)
    other = hub.connect()  # keeps the first stream alive (and ticking) throughout
    hub.subscribe(other, Subscribe("s", ("site/a/#",)))
    sub = hub.connect()
    mirror = Mirror()
    hub.subscribe(sub, Subscribe("s", ("site/a/#",)))
    deliver(hub, sub, mirror)
    hub.take(other, 0.0)
    store.apply("site/a/d0", {"v": 1}, 1.0)
    hub.tick(0.1)
    deliver(hub, sub, mirror, 0.1)  # the fast path, with its member remembered
    assert sub.solo is not None
    hub.unsubscribe(sub, Unsubscribe("s"))
    hub.subscribe(sub, Subscribe("t", ("site/b/#",)))
    mirror = Mirror()
    deliver(hub, sub, mirror, 0.1)
    for t, v in ((0.2, 2), (0.3, 3)):
        store.apply("site/a/d1", {"v": v}, t)  # the old stream: not this screen's
        store.apply("site/b/d0", {"v": v}, t)
        hub.tick(t)
        deliver(hub, sub, mirror, t)
        assert mirror_view(mirror) == expected_view(store, ["site/b/#"])
    # a second subscription: both streams reach the screen
    hub.subscribe(sub, Subscribe("u", ("site/a/#",)))
    deliver(hub, sub, mirror, 0.3)
    store.apply("site/a/d1", {"v": 4}, 0.4)
    store.apply("site/b/d0", {"v": 4}, 0.4)
    hub.tick(0.4)
    deliver(hub, sub, mirror, 0.4)
    assert mirror_view(mirror) == expected_view(store, ["site/a/#", "site/b/#"])


def test_rate_limits_ticks_per_group_and_ack_reports_the_granted_rate() -> None:
    store, hub = make(tick_hz=20)
    fill(store)
    fast, slow = hub.connect(), hub.connect()
    assert hub.subscribe(fast, Subscribe("f", ("site/#",), 100)).rate_hz == 20  # type: ignore[union-attr]
    assert hub.subscribe(slow, Subscribe("s", ("site/#",), 5)).rate_hz == 5  # type: ignore[union-attr]
    hub.take(fast, 0)
    hub.take(slow, 0)
    woken = {"fast": 0, "slow": 0}
    for n in range(1, 21):
        store.apply("site/a/d0", {"v": n}, n)
        for s in hub.tick(n / 20):
            woken["fast" if s is fast else "slow"] += 1
            hub.take(s, n / 20)
    assert woken == {"fast": 20, "slow": 5}


@pytest.mark.parametrize("tick_s", [0.05, 0.06, 0.075, 0.1, 0.25])
def test_late_ticks_keep_each_streams_rate(tick_s: float) -> None:
    """Ticks that come late (an overloaded loop: 1 / tick_hz is 50 ms here) still give
    a stream its rate, up to one frame a tick: counted in ticks rather than time, a
    10 Hz stream got 6.8 frames a second with a tick every 60 ms."""
    store, hub = make(tick_hz=20)
    fill(store)
    sub = hub.connect()
    assert hub.subscribe(sub, Subscribe("s", ("site/#",), 10)).rate_hz == 10  # type: ignore[union-attr]
    hub.take(sub, 0)
    frames, t, n = 0, 0.0, 0
    while t < 10.0:  # 10 s of changes, a tick every tick_s
        n += 1
        t = n * tick_s
        store.apply("site/a/d0", {"v": n}, t)
        for s in hub.tick(t):
            frames += len(hub.take(s, t))
    assert frames / 10.0 == pytest.approx(min(10.0, 1 / tick_s), rel=0.05)


def test_lagging_member_coalesces_then_snapshots_and_stays_exact() -> None:
    store, hub = make(ring_ticks=4)
    fill(store, n=2)
    lazy, busy = hub.connect(), hub.connect()
    lazy_m = Mirror()
    for s in (lazy, busy):
        hub.subscribe(s, Subscribe("s", ("site/a/#",), rate_hz=20))  # one group tick per hub tick
    deliver(hub, lazy, lazy_m)
    hub.take(busy, 0)
    for n in range(3):  # 3 ticks missed: coalesce 3 updates of d0 into one delta
        store.apply("site/a/d0", {"v": n + 10}, n)
        hub.tick(n)
        hub.take(busy, n)
    deliver(hub, lazy, lazy_m)
    assert hub.stats.coalesced == 2
    assert mirror_view(lazy_m) == expected_view(store, ["site/a/#"])
    for n in range(6):  # more ticks missed than the ring holds: a snapshot
        store.apply("site/a/d1", {"v": n + 20}, n)
        hub.tick(10 + n)
    assert sorted(deliver(hub, lazy, lazy_m)) == ["applied", "skipped"]  # d0 already current
    assert hub.stats.lag_snapshots == 1
    assert mirror_view(lazy_m) == expected_view(store, ["site/a/#"])


def test_lagging_member_gets_the_shared_frames_of_ticks_that_barely_overlap() -> None:
    store, hub = make(ring_ticks=8)
    fill(store, n=8)
    lazy, busy = hub.connect(), hub.connect()
    lazy_m = Mirror()
    for s in (lazy, busy):
        hub.subscribe(s, Subscribe("s", ("site/a/#",), rate_hz=20))
    deliver(hub, lazy, lazy_m)
    hub.take(busy, 0)
    ticks = []
    for n in range(4):  # 4 ticks missed, each on other devices: nothing to fold
        store.apply(f"site/a/d{2 * n}", {"v": n + 10}, n)
        store.apply(f"site/a/d{2 * n + 1}", {"v": n + 10}, n)
        hub.tick(n)
        ticks.append(hub.take(busy, n))
    personal = hub.stats.personal_fragments
    frames = hub.take(lazy, 4)
    assert [id(f) for f in frames] == [id(f) for t in ticks for f in t]  # the same objects
    assert hub.stats.personal_fragments == personal and hub.stats.caught_up_shared == 1
    for f in frames:
        for m in decode_server(f):
            lazy_m.apply(m)  # type: ignore[arg-type]
    assert mirror_view(lazy_m) == expected_view(store, ["site/a/#"])
    # the same topic in every missed tick: coalesced into one delta per topic instead
    for n in range(4):
        store.apply("site/a/d0", {"v": n + 20}, n)
        store.apply(f"site/a/d{n + 1}", {"v": n + 20}, n)
        hub.tick(10 + n)
    folded = hub.stats.coalesced
    deliver(hub, lazy, lazy_m)
    assert hub.stats.coalesced == folded + 3 and hub.stats.caught_up_shared == 1
    assert mirror_view(lazy_m) == expected_view(store, ["site/a/#"])


def test_grants_restrict_and_forbid() -> None:
    store, hub = make()
    fill(store)
    store.apply("$SYS/x", {"v": 1}, 0)
    sub = hub.connect(grants=["site/a/#"])
    assert isinstance(hub.subscribe(sub, Subscribe("x", ("site/b/#",))), Error)
    ack = hub.subscribe(sub, Subscribe("s", ("#",)))
    assert isinstance(ack, Ack) and ack.restricted
    m = Mirror()
    deliver(hub, sub, m)
    store.apply("site/b/d0", {"v": 7}, 1)
    store.apply("site/a/d0", {"v": 7}, 1)
    hub.tick(1)
    deliver(hub, sub, m)
    assert set(m.topics) == {"site/a/d0", "site/a/d1", "site/a/d2"}
    nobody = hub.connect(grants=[])
    err = hub.subscribe(nobody, Subscribe("s", ("#",)))
    assert isinstance(err, Error) and err.code == "forbidden"


def test_subscription_limits_and_unsubscribe() -> None:
    _store, hub = make(max_subscriptions=1)
    sub = hub.connect()
    assert isinstance(hub.subscribe(sub, Subscribe("a", ("a",))), Ack)
    dup = hub.subscribe(sub, Subscribe("a", ("b",)))
    assert isinstance(dup, Error) and dup.code == "duplicate_subscription"
    over = hub.subscribe(sub, Subscribe("b", ("b",)))
    assert isinstance(over, Error) and over.code == "too_many_subscriptions"
    assert isinstance(hub.unsubscribe(sub, Unsubscribe("a")), Ack)
    assert hub.groups == 0
    gone = hub.unsubscribe(sub, Unsubscribe("a"))
    assert isinstance(gone, Error) and gone.code == "unknown_subscription"


def test_resume_in_same_epoch_sends_only_the_delta() -> None:
    store, hub = make()
    fill(store)
    first = hub.connect()
    m = Mirror()
    m.set_epoch("e1")
    hub.subscribe(first, Subscribe("s", ("site/a/#",)))
    deliver(hub, first, m)
    hub.disconnect(first)
    store.apply("site/a/d1", {"v": 42}, 2)
    second = hub.connect()
    assert m.set_epoch(store.epoch)
    assert hub.resume(second, Resume("e1", m.positions())) == Ack("resume", resumed=True)
    hub.subscribe(second, Subscribe("s", ("site/a/#",)))
    frames = hub.take(second, 1)
    msgs = [msg for f in frames for msg in decode_server(f)]
    assert msgs == [store.diff("site/a/d1", 1)]
    assert isinstance(msgs[0], Delta) and msgs[0].set == {"v": 42}
    for msg in msgs:
        m.apply(msg)  # type: ignore[arg-type]
    assert mirror_view(m) == expected_view(store, ["site/a/#"])


def test_resume_with_another_epoch_gets_snapshots() -> None:
    store, hub = make()
    fill(store)
    sub = hub.connect()
    assert hub.resume(sub, Resume("old", {"site/a/d0": 1})) == Ack("resume", resumed=False)
    hub.subscribe(sub, Subscribe("s", ("site/a/#",)))
    msgs = [msg for f in hub.take(sub, 0) for msg in decode_server(f)]
    assert len(msgs) == 3 and all(isinstance(x, Snapshot) for x in msgs)


def test_resume_after_joining_resyncs_the_named_topics() -> None:
    store, hub = make()
    fill(store)
    sub = hub.connect()
    hub.subscribe(sub, Subscribe("s", ("site/a/#",)))
    hub.take(sub, 0)
    hub.resume(sub, Resume("e1", {"site/a/d0": 0, "site/b/d0": 0}))  # b: not subscribed
    msgs = [msg for f in hub.take(sub, 0) for msg in decode_server(f)]
    assert [x.topic for x in msgs] == ["site/a/d0"]  # type: ignore[union-attr]


def test_stalled_writer_and_lagging_reader_are_named_slow() -> None:
    store, hub = make(stall_s=5, max_lag_s=8)
    fill(store)
    stalled, lagging, healthy = hub.connect(), hub.connect(), hub.connect()
    for s in (stalled, lagging, healthy):
        hub.subscribe(s, Subscribe("s", ("site/#",)))
        hub.take(s, 0)
    hub.write_begun(stalled, 1.0)
    store.apply("site/a/d0", {"v": 1}, 1)
    hub.tick(2.0)  # lagging never takes from here on
    hub.take(healthy, 2.0)
    assert hub.find_slow(5.5) == []
    assert hub.find_slow(6.5) == [(stalled, "stalled")]
    hub.write_done(stalled, 6.6)
    hub.take(stalled, 6.6)
    assert hub.find_slow(9.0) == []
    assert hub.find_slow(10.5) == [(lagging, "lagging")]
    assert hub.stats.slow == {"stalled": 1, "lagging": 1}
    hub.disconnect(lagging)
    hub.disconnect(lagging)  # idempotent
    assert hub.subscribers == 2


def half_lagging(store: StateStore, hub: Hub, n: int = 450) -> list[Subscriber]:
    """``n`` screens that joined; then a change, which every other one takes."""
    fill(store)
    subs = [hub.connect() for _ in range(n)]
    for s in subs:
        hub.subscribe(s, Subscribe("s", ("site/#",)))
        hub.take(s, 0)
    store.apply("site/a/d0", {"v": 1}, 1)
    hub.tick(2.0)
    for s in subs[::2]:
        hub.take(s, 2.0)  # every other screen keeps up
    return subs


def test_finding_slow_screens_walks_thousands_in_bounded_slices() -> None:
    store, hub = make(max_lag_s=8, slice_items=100)
    subs = half_lagging(store, hub)
    ages: list[float] = []
    slices = list(hub.find_slow_steps(11.0, ages))
    assert len(slices) == 5  # 450 members, at most 100 between two yields
    found = [sub for batch in slices for sub, why in batch if why == "lagging"]
    assert sorted(s.id for s in found) == [s.id for s in subs[1::2]] and len(ages) == 225
    assert hub.stats.slow == {"lagging": 225}


def test_finding_slow_screens_also_yields_when_its_time_is_spent() -> None:
    """Given the shell's clock, the walk also yields once ``slice_seconds`` are spent
    (looked at every 64 members), and finds the same screens: a sweep of thousands of
    screens held the loop up to ~5 ms a step with the count alone."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # every look at the clock: a slice's whole time
        return now[0]

    found = []
    for timed in (False, True):
        store = StateStore("e1")
        cfg = HubConfig(max_lag_s=8, slice_items=100_000)
        hub = Hub(store, cfg, clock=clock if timed else None)
        subs = half_lagging(store, hub)
        slices = list(hub.find_slow_steps(11.0))
        found.append(sorted(sub.id for batch in slices for sub, _ in batch))
        assert len(slices) == (450 // 64 + 1 if timed else 1)
    assert found[0] == found[1] == sorted(s.id for s in subs[1::2])


def test_large_joins_are_split_into_bounded_frames() -> None:
    store, hub = make(max_frame_bytes=2048)
    for i in range(200):
        store.apply(f"t/{i}", {"payload": "x" * 50}, 0)
    sub = hub.connect()
    hub.subscribe(sub, Subscribe("s", ("#",)))
    assert not hub.take(sub, 0)  # over INLINE_JOIN_TOPICS: the next tick builds it
    hub.tick(0.05)
    frames = hub.take(sub, 0.05)
    assert len(frames) > 5
    assert all(len(f) <= 2048 for f in frames)
    assert sum(len(decode_server(f)) for f in frames) == 200


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="default_rate_hz"):
        HubConfig(tick_hz=5, default_rate_hz=10)
    with pytest.raises(ValueError):
        HubConfig(ring_ticks=1)


def test_the_fragment_cache_stays_within_its_budget_and_still_shares_bytes() -> None:
    budget = 64 * 1024
    store, hub = make(cache_bytes=budget)
    subs = [hub.connect() for _ in range(2)]
    hub.subscribe(subs[0], Subscribe("s", ("site/#",)))
    hub.subscribe(subs[1], Subscribe("s", ("site/a/#",)))  # another group, same topics
    for s in subs:
        hub.take(s, 0)
    for n in range(200):  # 200 ticks of 50 changing topics: far more than the budget
        for i in range(50):
            store.apply(f"site/a/d{i}", {"v": n, "pad": "x" * 40}, float(n))
        hub.tick(float(n))
        a, b = (hub.take(s, float(n)) for s in subs)
        assert a == b  # both groups got the same fragments: encoded once, reused
        held = sum(len(f) + 200 for f in hub._cache.values())
        held += sum(len(f) + 200 for f in hub._cache_old.values())
        assert held <= budget + 2 * 1024, held  # half the budget per generation, plus one


def test_cached_fragments_hold_no_more_memory_than_their_size() -> None:
    import tracemalloc

    store, hub = make()
    for i in range(2000):
        store.apply(f"site/a/d{i}", {"v": i}, 0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frags = [hub.fragment(f"site/a/d{i}", None, 1) for i in range(2000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    size = sum(len(f) for f in frags if f is not None)
    # the bytes themselves plus object headers, keys and the dicts' slots; not the 4 KiB
    # buffer orjson allocates for every output
    assert held < size + 2000 * 400, (held, size)
