"""The groups of one period are spread over its phases: a 10 Hz stream on a 20 Hz hub
ticks every other tick, and the hub puts the groups' screens half on the even, half
on the odd ticks, so that no tick writes every screen's frame while the next writes
none (4,000 screens at 10 Hz: each tick's writes took 54 ms every 100 ms, and the
last screens of a tick got their data that much later)."""

from itertools import pairwise

import pytest

from gateway.core.hub import Hub, HubConfig, Subscriber
from gateway.core.protocol import Subscribe, Unsubscribe
from gateway.core.state import StateStore

TICK_S = 0.05  # a 20 Hz hub


def make() -> tuple[StateStore, Hub]:
    store = StateStore("e1")
    for site in "abc":
        store.apply(f"{site}/d0", {"v": 0}, 0.0)
    return store, Hub(store, HubConfig(tick_hz=20))


def screens(hub: Hub, site: str, n: int) -> list[Subscriber]:
    subs = []
    for _ in range(n):
        sub = hub.connect()
        hub.subscribe(sub, Subscribe("s", (f"{site}/#",), 10))
        hub.take(sub, 0.0)  # its join snapshot
        subs.append(sub)
    return subs


def run(store: StateStore, hub: Hub, first: int, ticks: int) -> dict[int, list[int]]:
    """Ticks ``first`` .. ``first + ticks - 1`` with a change on every site before each;
    every woken screen takes its frames. Returns screen id -> ticks it got a frame in."""
    got: dict[int, list[int]] = {}
    for n in range(first, first + ticks):
        t = n * TICK_S
        for site in "abc":
            store.apply(f"{site}/d0", {"v": n}, t)
        for sub in hub.tick(t):
            if hub.take(sub, t):
                got.setdefault(sub.id, []).append(n)
    return got


def test_two_groups_of_one_period_tick_on_alternate_ticks() -> None:
    store, hub = make()
    a, b = screens(hub, "a", 3), screens(hub, "b", 3)
    got = run(store, hub, 1, 40)
    ticks_a = {n for s in a for n in got[s.id][1:]}  # after joining
    ticks_b = {n for s in b for n in got[s.id][1:]}
    assert len({n % 2 for n in ticks_a}) == 1  # each group on one phase...
    assert len({n % 2 for n in ticks_b}) == 1
    assert ticks_a.isdisjoint(ticks_b)  # ...not the same one
    for s in a + b:  # and each stream keeps its rate: every other tick
        steady = got[s.id][1:]
        assert {y - x for x, y in pairwise(steady)} == {2}


def test_a_group_moves_to_the_lighter_phase_with_one_longer_interval_never_a_shorter() -> None:
    store, hub = make()
    a = screens(hub, "a", 1)
    b = screens(hub, "b", 1)  # the other phase
    c = screens(hub, "c", 1)  # a tie: a phase shared with a or b
    got = run(store, hub, 1, 20)
    shared = a if got[a[0].id][-1] % 2 == got[c[0].id][-1] % 2 else b
    other = b if shared is a else a
    for s in other:  # the group alone on its phase goes: two groups on one phase, none
        hub.unsubscribe(s, Unsubscribe("s"))  # on the other
    after = run(store, hub, 21, 40)
    # one of the two groups on the crowded phase moved to the empty one
    last = {s.id: after[s.id][-1] % 2 for s in shared + c}
    assert len(set(last.values())) == 2
    for s in shared + c:
        ticks = got[s.id][-1:] + after[s.id]
        gaps = [y - x for x, y in pairwise(ticks)]
        assert min(gaps) == 2  # never more often than the stream's rate
        assert max(gaps) <= 3  # a move lengthens one interval, by less than a period
        assert sum(g == 3 for g in gaps) <= 1


def test_a_lone_group_does_not_move() -> None:
    store, hub = make()
    a = screens(hub, "a", 5)
    got = run(store, hub, 1, 40)
    steady = got[a[0].id][1:]
    assert {y - x for x, y in pairwise(steady)} == {2}


@pytest.mark.parametrize("tick_s", [0.05, 0.06, 0.075, 0.1, 0.25])
def test_groups_on_two_phases_keep_their_rate_when_ticks_come_late(tick_s: float) -> None:
    """Late ticks (1 / tick_hz is 50 ms here) skip tick numbers, some of them a group's
    due tick: it ticks at the next one and stays on its phase, so each stream still gets
    its rate, up to one frame a tick."""
    store, hub = make()
    subs = screens(hub, "a", 3) + screens(hub, "b", 1)  # two groups, two phases
    frames = dict.fromkeys((s.id for s in subs), 0)
    n, t = 0, 0.0
    while t < 10.0:
        n += 1
        t = n * tick_s
        for site in "ab":
            store.apply(f"{site}/d0", {"v": n}, t)
        for sub in hub.tick(t):
            frames[sub.id] += len(hub.take(sub, t))
    for got in frames.values():
        assert got / 10.0 == pytest.approx(min(10.0, 1 / tick_s), rel=0.05)


def test_one_subscribe_with_two_filters_spreads_its_two_groups() -> None:
    _, hub = make()
    sub = hub.connect()
    hub.subscribe(sub, Subscribe("s", ("a/#", "b/#"), 10))
    assert sorted(g.phase for g in hub._groups.values()) == [0, 1]


def test_a_group_made_during_a_tick_keeps_to_its_phase() -> None:
    """Made between two slices of a tick, a group may tick in that very tick, off
    the phase it was given: its next tick must be on its phase, not a period on."""
    store = StateStore("e1")
    topics = ["a/0", "b/0", "c/0", "c/1", "c/2"]
    for topic in topics:
        store.apply(topic, {"v": 0}, 0.0)
    hub = Hub(store, HubConfig(tick_hz=20, slice_items=2))
    first = screens(hub, "a", 1)
    later: list[Subscriber] = []
    for n in range(1, 41):
        t = n * TICK_S
        for topic in topics:
            store.apply(topic, {"v": n}, t)
        for i, woken in enumerate(hub.tick_steps(t)):
            if n == 11 and i == 0:  # between two slices of tick 11
                for _ in range(3):
                    sub = hub.connect()
                    hub.subscribe(sub, Subscribe("s", ("c/2",), 10))
                    later.append(sub)
            for sub in woken:
                hub.take(sub, t)
        for sub in first + later:
            hub.take(sub, t)
    groups = {g.key.filter: g for g in hub._groups.values()}
    a, c = groups["a/#"], groups["c/2"]
    assert a.phase != c.phase
    assert a.next_tick % 2 == a.phase and c.next_tick % 2 == c.phase  # as counted


def test_late_ticks_send_at_every_tick_the_rate_allows_then_the_phases_come_back() -> None:
    """When the loop falls behind (tick numbers skipped), a group goes on as the ticks
    allow rather than waiting for its phase (that lost 3 to 5 % of the frames with
    ticks 50 to 300 ms apart); once the ticks are on time again (a second of them), it
    goes back to its phase."""
    store, hub = make()
    a, b = screens(hub, "a", 2), screens(hub, "b", 1)
    run(store, hub, 1, 10)
    n, late_ticks = 10, []
    for step in [5, 2, 3, 5, 2, 4, 5, 2, 3, 2] * 2:  # 100 to 250 ms apart
        n += step
        late_ticks.append(n)
        t = n * TICK_S
        for site in "ab":
            store.apply(f"{site}/d0", {"v": n}, t)
        woken = {sub.id for sub in hub.tick(t) if hub.take(sub, t)}
        assert woken == {s.id for s in a + b}, n  # every screen, at every late tick
    after = run(store, hub, n + 1, 40)
    phases_a = {t % 2 for s in a for t in after[s.id][-5:]}
    phases_b = {t % 2 for s in b for t in after[s.id][-5:]}
    assert len(phases_a) == len(phases_b) == 1 and phases_a != phases_b


def test_a_feed_that_pauses_keeps_its_groups_on_their_phases() -> None:
    """The shell does not tick while the hub is idle: the tick numbers a quiet spell
    skips do not mean the loop is behind (else a feed pausing once a second would
    keep the phases at rest for good, the groups ticking together)."""
    store, hub = make()
    a, b = screens(hub, "a", 3), screens(hub, "b", 3)
    # changes every 50 ms, with a pause of 300 ms each second
    changes = [0.013 + k * TICK_S for k in range(1, 400) if k % 20 < 14]
    i, last, next_at, together, ticks = 0, -1.0, 0.0, 0, 0
    while i < len(changes):  # the tick loop's timing (serve/fanout.py)
        quiet = hub.idle
        next_at = max(last + TICK_S, changes[i]) if quiet else next_at + TICK_S
        while i < len(changes) and changes[i] <= next_at:
            for site in "ab":
                store.apply(f"{site}/d0", {"v": i}, changes[i])
            i += 1
        last = next_at
        woken = hub.tick(next_at, after_quiet=quiet)
        got = {s.id for s in woken if hub.take(s, next_at)}
        ticks += 1
        together += a[0].id in got and b[0].id in got
    assert ticks > 250
    assert together <= ticks // 10  # after each pause, at most a tick or two together
