"""StateStore.apply_replica: a replica fed the authority's changed records holds the
same states (seqs, versions, tombstones, floors), so every diff it answers is the
authority's. Records travel through the checkpoint encoding, as in gateway/cluster."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import snapshotfile
from gateway.core.state import StateStore, TopicState, UpdateMode
from gateway.core.topics import RuleTable

TOPICS = ["a/1", "a/2", "b/1"]
NAMES = ["x", "y", "z", "w"]

values = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["on", "off"]))
op = st.one_of(
    st.tuples(
        st.just("apply"),
        st.sampled_from(TOPICS),
        st.dictionaries(st.sampled_from(NAMES), values, max_size=3),
        st.booleans(),
    ),
    st.tuples(st.just("presence"), st.sampled_from(TOPICS), st.booleans()),
    st.tuples(st.just("time"), st.floats(0.1, 30.0)),
    st.tuples(st.just("all_stale")),
    st.tuples(st.just("tick")),
    st.tuples(st.just("join")),
)


def authority() -> StateStore:
    return StateStore(
        "e1", max_tombstones=2, stale_after=RuleTable([("b/#", 5.0)]), stale_floor_s=1.0
    )


def records(store: StateStore, topics: list[str]) -> list[TopicState]:
    """What the parent sends: the changed topics' records, encoded and decoded."""
    payload = snapshotfile.encode_records(s for t in topics if (s := store.get(t)) is not None)
    return snapshotfile.decode_records(payload)


def full_sync(store: StateStore) -> list[TopicState]:
    out: list[TopicState] = []
    for chunk in snapshotfile.encode_topics(store, batch=1):
        for _ in snapshotfile.decode_topics(memoryview(chunk), out):
            pass
    return out


#: the authority's staleness bookkeeping (seen_at, report_at, interval) moves with
#: messages that change nothing, so a replica has it as of the topic's last change
BOOKKEEPING = {"seen_at", "report_at", "interval"}


def visible(s: TopicState) -> list[object]:
    rec = snapshotfile._record(s)
    return [v for n, v in zip(snapshotfile.TOPIC_FIELDS, rec, strict=True) if n not in BOOKKEEPING]


def same(a: StateStore, b: StateStore) -> None:
    assert a.epoch == b.epoch
    assert a.changes == b.changes
    # a topic the authority knows without data (seq 0) is never sent: no screen sees it
    with_data = sorted(t for t in a.topics() if a.get(t).seq)  # type: ignore[union-attr]
    assert with_data == sorted(b.topics())
    for topic in with_data:
        sa, sb = a.get(topic), b.get(topic)
        assert sa is not None and sb is not None
        assert visible(sa) == visible(sb)
        for base in [None, *range(sa.seq + 2)]:
            assert a.diff(topic, base) == b.diff(topic, base)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=60))
def test_replicas_hold_the_authoritys_states(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    auth = authority()
    replicas = [StateStore("e1")]
    now = 1000.0
    for o in ops:
        kind = o[0]
        if kind == "apply":
            mode = UpdateMode.REPLACE if o[3] else UpdateMode.MERGE
            auth.apply(o[1], o[2], now, mode=mode)
        elif kind == "presence":
            auth.set_presence(o[1], o[2], now)
        elif kind == "time":
            now += o[1]
            auth.sweep_stale(now)
        elif kind == "all_stale":
            auth.mark_all_stale(now)
        elif kind == "tick":
            batch = records(auth, auth.drain_changed())
            for r in replicas:
                for rec in records_copy(batch):
                    r.apply_replica(rec)
                r.changes = auth.changes
        elif kind == "join" and len(replicas) < 3:
            # a new replica: the full sync, while earlier changes are still undrained
            fresh = StateStore("e1")
            for rec in full_sync(auth):
                fresh.apply_replica(rec)
            fresh.changes = auth.changes
            replicas.append(fresh)
    batch = records(auth, auth.drain_changed())
    for r in replicas:
        for rec in records_copy(batch):
            r.apply_replica(rec)
        r.changes = auth.changes
        same(auth, r)
        assert r.sweep_stale(now + 1e6) == []  # a replica never decides staleness


def records_copy(batch: list[TopicState]) -> list[TopicState]:
    """Each replica gets its own objects (each worker decodes its own copy)."""
    return [TopicState(**{n: getattr(s, n) for n in TopicState.__slots__}) for s in batch]


def test_older_and_repeated_records_are_ignored() -> None:
    auth = authority()
    auth.apply("a/1", {"x": 1}, 1.0)
    old = records(auth, ["a/1"])[0]
    auth.apply("a/1", {"x": 2, "y": 3}, 2.0)
    new = records(auth, ["a/1"])[0]
    replica = StateStore("e1")
    changed: list[int] = []
    replica.on_change = lambda: changed.append(1)
    assert replica.apply_replica(new) == 0  # a new topic: held seq 0 before
    assert replica.drain_changed() == ["a/1"] and changed == [1]
    assert replica.apply_replica(old) is None
    assert replica.apply_replica(records(auth, ["a/1"])[0]) is None
    assert not replica.has_changes
    auth.apply("a/1", {"y": None}, 3.0)
    assert replica.apply_replica(records(auth, ["a/1"])[0]) == 2
    held = replica.get("a/1")
    assert held is not None and held.fields == {"x": 2} and held.tombstones == {"y": 3}
    assert replica.diff("a/1", 2) == auth.diff("a/1", 2)


def test_a_replica_alarm_engine_follows_the_authoritys_alarm_topics() -> None:
    from gateway.core.alarms import AlarmEngine, AlarmRule

    rule = AlarmRule("hot", "plant/+", "high", "major", "temp", 50.0)
    auth = StateStore("e1")
    engine = AlarmEngine((rule,), auth)
    auth.on_accept = engine.observe
    replica = StateStore("e1")
    mirror = AlarmEngine((rule,), replica)

    def replicate() -> None:
        for rec in records(auth, auth.drain_changed()):
            if replica.apply_replica(rec) is not None and rec.topic.startswith("$alarms/"):
                mirror.mirror(rec, 0.0)

    auth.apply("plant/1", {"temp": 60.0}, 1.0)
    replicate()
    assert [a.key for a in mirror.open_alarms()] == [a.key for a in engine.open_alarms()] != []
    auth.apply("plant/1", {"temp": 10.0}, 2.0)
    engine.ack([a.key for a in engine.alarms()], "op", "r1", 3.0)
    replicate()
    assert [a.key for a in mirror.open_alarms()] == [a.key for a in engine.open_alarms()] == []
    assert replica.changes == auth.changes  # the mirror never wrote to the replica
