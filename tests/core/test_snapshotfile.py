"""The checkpoint format: a round trip keeps everything a screen sees, restored topics
are stale with seqs that only grow, a client resumes with a delta, and every kind of
damaged file is refused with its reason."""

from __future__ import annotations

import struct

import pytest

from gateway.core import snapshotfile as sf
from gateway.core.hub import Hub
from gateway.core.mirror import Mirror
from gateway.core.protocol import Resume, Subscribe
from gateway.core.state import Delta, StateStore, TopicState
from gateway.core.topics import RuleTable
from tests.core.helpers import deliver, expected_view, mirror_view


def busy_store(n: int = 50) -> StateStore:
    s = StateStore("ep-1", max_tombstones=2, stale_after=RuleTable([("site/2/#", 50.0)]))
    for i in range(n):
        t = f"site/{i % 3}/dev/{i}"
        s.apply(
            t,
            {"t": 20.0 + i, "h": i, "tags": ["a", {"b": [1, 2]}], "x": 1},
            10.0 + i,
            device_ts=5.0 + i,
        )
        s.apply(t, {"x": None, "t": 21.5}, 11.0 + i)
        if i % 2:
            s.set_presence(t, True, 12.0)
        if i % 5 == 0:  # three removals with a window of two: the floor rises
            for f in ("a", "b", "c"):
                s.apply(t, {f: 1}, 13.0)
                s.apply(t, {f: None}, 13.0)
    assert s.sweep_stale(100.0)  # some topics are stale already: restoring leaves them
    s.apply("quiet", {}, 1.0)  # a topic with seq 0 (nothing ever set) is not written
    return s


def write(store: StateStore, extra: dict[str, list[bytes]] | None = None) -> bytes:
    topics = list(sf.encode_topics(store, batch=7))
    meta = {"epoch": store.epoch, "changes": store.stats.changes, "topics": len(store)}
    head, body = sf.assemble(meta, topics, extra)
    return head + b"".join(body)


def read(data: bytes) -> tuple[sf.Checkpoint, list[TopicState]]:
    ckpt = sf.parse(data)
    out: list[TopicState] = []
    for _ in sf.decode_topics(ckpt.sections["topics"], out, batch=7):
        pass
    return ckpt, out


def test_round_trip_keeps_every_topic_field_version_tombstone_and_time() -> None:
    s = busy_store()
    ckpt, states = read(write(s))
    assert (ckpt.epoch, ckpt.changes, ckpt.version) == ("ep-1", s.stats.changes, 1)
    before = {st.topic: st for st in s.states() if st.seq}
    assert {st.topic: st for st in states} == before
    assert any(st.floor for st in states) and any(st.tombstones for st in states)
    tomb = next(st for st in states if st.tombstones)
    assert list(tomb.tombstones) == list(before[tomb.topic].tombstones)  # removal order


def test_restored_topics_keep_their_freshness_and_go_stale_as_if_never_stopped() -> None:
    old = busy_store()
    old.apply("once", {"v": 1}, 90.0)  # spoke once: no interval learned, no rule
    old.apply("fresh", {"v": 1}, 95.0)
    old.apply("fresh", {"v": 2}, 99.0)  # learned interval 4 s: stale after 12 s
    old.apply("$alarms/r/once", {"state": "active_unacked"}, 90.0)  # the gateway's own
    hub_old = Hub(old)
    sub = hub_old.connect()
    hub_old.subscribe(sub, Subscribe("s", ("#",), None))
    mirror = Mirror()
    mirror.set_epoch(old.epoch)
    hub_old.tick(0.0)
    deliver(hub_old, sub, mirror)
    assert mirror_view(mirror) == expected_view(old, ["#"])
    fresh_before = {st.topic for st in old.states() if st.seq and not st.stale}
    assert {"fresh", "$alarms/r/once", "site/2/dev/44"} <= fresh_before

    ckpt, states = read(write(old))
    new = StateStore(ckpt.epoch, max_tombstones=2, stale_after=RuleTable([("site/2/#", 50.0)]))
    new.stats.changes = ckpt.changes
    assert all(new.restore(st) for st in states)
    assert not new.restore(TopicState(states[0].topic, 1))  # a known topic: refused
    for st in new.states():
        was = old.get(st.topic)
        assert was is not None
        assert (st.device_ts, st.changed_at) == (was.device_ts, was.changed_at)
        assert (st.seen_at, st.interval) == (was.seen_at, was.interval)
        if st.topic == "once":  # no limit known: stale at once, a change
            assert st.stale and st.seq == was.seq + 1
        else:  # stale stays stale; fresh stays fresh until its deadline; alarms as they were
            assert (st.seq, st.stale) == (was.seq, was.stale)
    assert new.stats.changes == old.stats.changes + 1
    assert new.drain_changed() == ["once"]

    # the same screen, on the restored store, in the same epoch: one delta, for "once"
    from gateway.core.protocol import decode_server

    def resumed(now: float) -> list[object]:
        hub.tick(now)
        msgs: list[object] = []
        for frame in hub.take(sub, now):
            msgs.extend(decode_server(frame))
        for m in msgs:
            assert isinstance(m, Delta), m
            mirror.apply(m)
        assert mirror_view(mirror) == expected_view(new, ["#"])
        return msgs

    hub = Hub(new)
    sub = hub.connect()
    hub.subscribe(sub, Subscribe("s", ("#",), None))
    hub.resume(sub, Resume(new.epoch, mirror.positions()))
    assert [m.topic for m in resumed(1.0)] == ["once"]  # type: ignore[attr-defined]

    # the sweep marks what the old store would have marked, at the same times
    for now in (100.5, 105.0, 110.0, 111.5, 200.0):
        assert sorted(new.sweep_stale(now)) == sorted(old.sweep_stale(now)), now
    assert new.get("fresh").stale and not new.get("$alarms/r/once").stale  # type: ignore[union-attr]
    new.apply("site/0/dev/0", {"t": 99.0}, 200.0, device_ts=199.0)  # a device speaks again
    assert {m.topic for m in resumed(2.0)} >= {"fresh", "site/0/dev/0"}  # type: ignore[attr-defined]
    refreshed = new.get("site/0/dev/0")
    assert refreshed is not None and not refreshed.stale


def test_unknown_sections_are_skipped_and_listed() -> None:
    ckpt, states = read(write(busy_store(3), {"alarms": [b"[1,2]\n"]}))
    assert ckpt.unknown == ["alarms"] and bytes(ckpt.sections["alarms"]) == b"[1,2]\n"
    assert len(states) == 3


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:10], "truncated"),
        (lambda d: b"", "truncated"),
        (lambda d: d + b"x", "corrupt"),
        (lambda d: d[:-5] + bytes([d[-5] ^ 1]) + d[-4:], "corrupt"),
        (lambda d: b"GIF89a" + d[6:], "corrupt"),
        (lambda d: d[:12] + bytes([d[12] ^ 1]) + d[13:], "corrupt"),  # header CRC
        (lambda d: future(d), "version"),
    ],
)
def test_damaged_files_are_refused_with_their_reason(damage, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(sf.CheckpointError) as info:
        read(damage(write(busy_store(20))))
    assert info.value.reason == reason


def future(data: bytes) -> bytes:
    import zlib

    head = bytearray(data[:24])
    struct.pack_into("<H", head, 8, sf.FORMAT_VERSION + 1)
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + data[28:]


def test_well_checksummed_but_malformed_records_are_corrupt() -> None:
    for payload in (b"[1,2]\n", b'["t",1,{},{},{},0,0,null,false,null,0,0,1]', b"{}\n"):
        head, body = sf.assemble({"epoch": "e", "changes": 1, "topics": 1}, [payload])
        with pytest.raises(sf.CheckpointError) as info:
            read(head + b"".join(body))
        assert info.value.reason == "corrupt"
    bad_versions = b'["t",1,{"a":1},{"a":5},{},0,0,null,false,null,0,0,1]\n'  # version > seq
    head, body = sf.assemble({"epoch": "e", "changes": 1, "topics": 1}, [bad_versions])
    with pytest.raises(sf.CheckpointError):
        read(head + b"".join(body))


def test_a_record_written_before_the_learned_interval_was_kept_still_loads() -> None:
    old = b'["t",2,{"a":1},{"a":2},{},0,1,null,false,null,3.0,4.0,7]\n'
    head, body = sf.assemble({"epoch": "e", "changes": 7, "topics": 1}, [old])
    _, (st,) = read(head + b"".join(body))
    assert (st.topic, st.seq, st.fields, st.seen_at, st.gseq) == ("t", 2, {"a": 1}, 4.0, 7)
    assert (st.report_at, st.interval) == (None, 0.0)  # nothing learned yet: learns again
    s = StateStore("e")
    s.apply("dev", {"v": 1}, 10.0)
    s.apply("dev", {"v": 2}, 15.0)
    _, (new,) = read(write(s))
    assert (new.report_at, new.interval) == (15.0, 5.0)
