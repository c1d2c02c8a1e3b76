"""The wall registry (gateway/core/walls.py) and the wall messages of the protocol:
plain unit tests with ``now`` passed in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.core.protocol import (
    MAX_REPORT_BYTES,
    ActionAck,
    ProtocolError,
    Report,
    decode_client,
    encode_action,
)
from gateway.core.walls import MAX_ACTIONS, STATES, WallError, Walls, WallsConfig

EPOCH = "e1"


class Store:
    """The gateway's side: an epoch and (seq, changed_at) per topic."""

    def __init__(self) -> None:
        self.epoch = EPOCH
        self.topics: dict[str, tuple[int, float]] = {}

    def registry(self, **cfg: Any) -> Walls:
        return Walls(WallsConfig(**cfg), lambda: self.epoch, self.topics.get)


def report(wall: str = "lobby", **fields: Any) -> Report:
    msg = decode_client(orjson.dumps({"type": "report", "wall": wall, **fields}))
    assert isinstance(msg, Report)
    return msg


def states(walls: Walls, now: float) -> dict[str, str]:
    return {row["name"]: row["state"] for row in walls.listing(now)}


# -- the messages ------------------------------------------------------------------------


def test_a_full_report_decodes_with_every_field() -> None:
    r = report(
        "hall-1",
        page="Overview",
        transport="sse",
        epoch=EPOCH,
        topic="a/b",
        seq=7,
        rx=1000.5,
        data_age_s=1.5,
        fps=59.9,
        slowest_frame_ms=40,
        heap_bytes=12_000_000,
        visible=False,
        reconnects=2,
        trouble="no heartbeat",
        reloaded_by="a-3",
    )
    assert (r.wall, r.page, r.transport, r.topic, r.seq) == ("hall-1", "Overview", "sse", "a/b", 7)
    assert (r.fps, r.slowest_frame_ms, r.heap_bytes, r.visible) == (59.9, 40.0, 12_000_000, False)
    assert (r.reconnects, r.trouble, r.reloaded_by) == (2, "no heartbeat", "a-3")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"wall": ""}, "bad_message"),
        ({"wall": "x" * 65}, "bad_message"),
        ({"wall": "<script>"}, "bad_message"),
        ({"wall": 3}, "bad_message"),
        ({"wall": "a", "transport": "carrier-pigeon"}, "bad_message"),
        ({"wall": "a", "seq": -1}, "bad_message"),
        ({"wall": "a", "seq": 1.5}, "bad_message"),
        ({"wall": "a", "fps": 5000}, "bad_message"),
        ({"wall": "a", "heap_bytes": "big"}, "bad_message"),
        ({"wall": "a", "visible": "yes"}, "bad_message"),
        ({"wall": "a", "page": "x\u0000y"}, "bad_message"),
        ({"wall": "a", "trouble": "t" * 201}, "bad_message"),
        ({"wall": "a", "topic": "a/#"}, "bad_filter"),
    ],
)
def test_bad_reports_are_refused_with_a_code(fields: dict[str, Any], code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_client(orjson.dumps({"type": "report", **fields}))
    assert err.value.code == code


def test_a_report_over_the_byte_cap_is_refused_even_if_every_field_is_valid() -> None:
    padded = {"type": "report", "wall": "a", "page": "p", "pad": "x" * MAX_REPORT_BYTES}
    with pytest.raises(ProtocolError) as err:
        decode_client(orjson.dumps(padded))
    assert err.value.code == "bad_message" and "bytes" in err.value.message
    # multi-byte characters count as bytes, not characters
    wide = {"type": "report", "wall": "a", "pad": "\u20ac" * (MAX_REPORT_BYTES // 3 + 1)}
    with pytest.raises(ProtocolError):
        decode_client(orjson.dumps(wide).decode())
    assert isinstance(decode_client(orjson.dumps({"type": "report", "wall": "a"})), Report)


def test_action_ack_and_action_messages() -> None:
    ack = decode_client(b'{"type":"action_ack","id":"a-1","ok":false,"detail":"no such page"}')
    assert ack == ActionAck("a-1", False, "no such page")
    with pytest.raises(ProtocolError):
        decode_client(b'{"type":"action_ack","id":"a-1","ok":"yes"}')
    assert orjson.loads(encode_action("a-2", "page", {"page": "Hall 2"})) == {
        "type": "action",
        "id": "a-2",
        "action": "page",
        "page": "Hall 2",
    }


# -- the registry --------------------------------------------------------------------------


def test_walls_are_judged_by_the_documented_thresholds() -> None:
    store = Store()
    walls = store.registry(lag_s=5, stale_s=60, min_fps=5, slow_frame_ms=1000, silent_s=35)
    t = 1000.0
    walls.report("c1", report("ok", epoch=EPOCH, fps=60, data_age_s=1), t)
    walls.report("c2", report("hidden", visible=False, fps=0), t)
    walls.report("c3", report("old-epoch", epoch="e0"), t)
    walls.report("c4", report("old-data", epoch=EPOCH, data_age_s=61), t)
    walls.report("c5", report("slow", epoch=EPOCH, fps=4.9), t)
    walls.report("c6", report("jank", epoch=EPOCH, slowest_frame_ms=1001), t)
    walls.report("c7", report("going", epoch=EPOCH), t)
    walls.disconnected("c7", t + 1)
    assert states(walls, t + 1) == {
        "ok": "healthy",
        "hidden": "hidden",
        "old-epoch": "stale",
        "old-data": "stale",
        "slow": "lagging",
        "jank": "lagging",
        "going": "gone",
    }
    # worst first: gone, stale, lagging, hidden, healthy
    order = [row["state"] for row in walls.listing(t + 1)]
    assert order == sorted(order, key=STATES.index)
    # silence: no report for silent_s makes a healthy wall lagging
    assert states(walls, t + 35)["ok"] == "healthy"
    row = next(r for r in walls.listing(t + 35.5) if r["name"] == "ok")
    assert row["state"] == "lagging" and "no report" in row["why"]
    assert walls.counts(t + 1) == {"gone": 1, "stale": 2, "lagging": 2, "hidden": 1, "healthy": 1}


def test_how_far_behind_comes_from_the_reported_position_and_the_stores() -> None:
    store = Store()
    walls = store.registry(lag_s=5)
    store.topics["a/b"] = (10, 2000.0)
    t = 2000.0
    current = walls.report("c1", report("current", epoch=EPOCH, topic="a/b", seq=10, rx=2000.0), t)
    assert (current.behind_seq, current.behind_s) == (0, 0.0)
    # the gateway holds seq 40 of the topic, changed 12 s after the change the wall shows
    store.topics["a/b"] = (40, 2012.0)
    behind = walls.report("c2", report("behind", epoch=EPOCH, topic="a/b", seq=10, rx=2000.0), t)
    assert (behind.behind_seq, behind.behind_s) == (30, 12.0)
    rows = walls.listing(t)
    assert rows[0]["name"] == "behind" and rows[0]["state"] == "lagging"
    assert rows[0]["behind_s"] == 12.0 and rows[0]["behind_seq"] == 30
    # ahead of the gateway (its own bug) or an unknown topic is not "behind"
    ahead = walls.report("c3", report("ahead", epoch=EPOCH, topic="a/b", seq=99, rx=1.0), t)
    unknown = walls.report("c4", report("other", epoch=EPOCH, topic="x/y", seq=1, rx=1.0), t)
    assert ahead.behind_s == unknown.behind_s == 0.0


def test_reports_sooner_than_the_minimum_interval_are_refused_per_connection() -> None:
    walls = Store().registry(min_report_s=2, report_s=10)
    walls.report("c1", report("a", fps=60), 100.0)
    with pytest.raises(WallError) as err:
        walls.report("c1", report("a", fps=1), 101.9)
    assert err.value.code == "too_soon"
    assert walls.listing(101.9)[0]["fps"] == 60  # nothing changed
    walls.report("c1", report("a", fps=30), 102.0)
    # the same wall from a new connection (a reloaded page) is taken at once
    walls.report("c2", report("a", fps=50), 102.1)
    assert walls.listing(102.1)[0]["fps"] == 50
    assert walls.stats.refused["too_soon"] == 1


def test_a_wall_gone_stays_listed_for_gone_keep_s_then_is_forgotten() -> None:
    walls = Store().registry(gone_keep_s=600)
    walls.report("c1", report("a"), 0.0)
    assert walls.disconnected("c1", 10.0) is not None
    assert walls.listing(610.0)[0]["state"] == "gone"
    assert walls.listing(610.1) == []
    assert walls.disconnected("c1", 611.0) is None  # once only


def test_a_reloaded_wall_keeps_its_name_and_the_old_page_leaving_does_not_make_it_gone() -> None:
    walls = Store().registry()
    walls.report("old", report("a"), 0.0)
    walls.report("new", report("a", reloaded_by="a-1"), 1.0)  # before the old page closed
    walls.disconnected("old", 2.0)
    row = walls.listing(2.0)[0]
    assert row["state"] == "healthy" and row["connected"] and row["reloaded_by"] == "a-1"
    assert row["connects"] == 2
    walls.disconnected("new", 3.0)
    assert walls.listing(3.0)[0]["state"] == "gone"
    walls.report("newer", report("a"), 4.0)  # back again
    assert walls.listing(4.0)[0]["state"] == "healthy"


def test_a_connection_renaming_its_wall_leaves_the_old_name_gone() -> None:
    walls = Store().registry()
    walls.report("c1", report("a"), 0.0)
    walls.report("c1", report("b"), 5.0)
    assert states(walls, 5.0) == {"a": "gone", "b": "healthy"}


def test_the_registry_is_bounded_and_makes_room_by_forgetting_the_longest_gone() -> None:
    walls = Store().registry(max_walls=3)
    for n in range(3):
        walls.report(f"c{n}", report(f"w{n}"), float(n))
    with pytest.raises(WallError) as err:
        walls.report("c9", report("w9"), 5.0)
    assert err.value.code == "too_many_walls" and len(walls) == 3
    walls.disconnected("c1", 6.0)
    walls.disconnected("c0", 7.0)
    walls.report("c9", report("w9"), 8.0)
    assert set(states(walls, 8.0)) == {"w0", "w2", "w9"}  # w1 was gone longest
    assert walls.stats.refused["full"] == 1


def test_actions_are_recorded_acknowledged_and_bounded() -> None:
    walls = Store().registry(action_timeout_s=30)
    walls.report("c1", report("a"), 0.0)
    conn, act = walls.action("a", "reload", {}, "ops", 1.0)
    assert conn == "c1" and act.id == "a-1"
    assert walls.listing(2.0)[0]["actions"][0]["status"] == "sent"
    assert walls.listing(31.5)[0]["actions"][0]["status"] == "no answer"
    done = walls.ack("c1", ActionAck("a-1", True, "reloading"), 32.0)
    assert done.acked_at == 32.0
    assert walls.listing(33.0)[0]["actions"][0]["status"] == "done"
    with pytest.raises(WallError) as err:
        walls.ack("c1", ActionAck("a-99", True), 33.0)
    assert err.value.code == "unknown_action"
    with pytest.raises(WallError) as err:
        walls.ack("c2", ActionAck("a-1", True), 33.0)  # another connection's
    assert err.value.code == "unknown_action"
    for n in range(MAX_ACTIONS + 3):
        walls.action("a", "banner", {"text": f"m{n}"}, "ops", 40.0 + n)
    actions = walls.listing(60.0)[0]["actions"]
    assert len(actions) == MAX_ACTIONS and actions[-1]["text"] == f"m{MAX_ACTIONS + 2}"
    with pytest.raises(WallError) as err:
        walls.action("a", "format-disk", {}, "ops", 61.0)
    assert err.value.code == "bad_action"
    with pytest.raises(WallError) as err:
        walls.action("nobody", "reload", {}, "ops", 61.0)
    assert err.value.code == "unknown_wall"
    walls.disconnected("c1", 62.0)
    with pytest.raises(WallError) as err:
        walls.action("a", "reload", {}, "ops", 63.0)
    assert err.value.code == "wall_gone"


@pytest.mark.parametrize(
    "bad",
    [{"report_s": 0}, {"min_report_s": 40}, {"max_walls": 0}, {"metrics_per_wall": -1}],
)
def test_the_configuration_is_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WallsConfig(**bad)
