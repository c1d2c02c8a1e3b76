"""The scaling benchmark's machinery at a tiny size: every server (ours and the three
peers) through a real mosquitto, the join wave seen by every screen, the report's
tables and plots. Numbers are not asserted (the machine is shared); what each run
must have measured is."""

from __future__ import annotations

import concurrent.futures
import pathlib
import random

import pytest

from tests.conftest import require_binary

DEVICES, SCREENS = 50, 5


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    require_binary("mosquitto")
    from bench.scaling_bench import PEERS, key, run

    def one(peer: str) -> dict:
        return run(peer, DEVICES, SCREENS, 5.0, client_procs=1, settle=1.5, join_budget=2.5)

    with concurrent.futures.ThreadPoolExecutor(len(PEERS)) as pool:
        done = dict(zip(PEERS, pool.map(one, PEERS), strict=True))
    return {key(p, DEVICES, SCREENS, False, True): r for p, r in done.items()}


@pytest.mark.parametrize("peer", ["ours", "coalesce", "naive", "mqtt"])
def test_every_server_delivers_values_to_every_screen(runs: dict, peer: str) -> None:
    r = runs[f"{peer}|{DEVICES}|{SCREENS}|nodb|z"]
    assert r["subscribed"] == SCREENS and r["closed"] == 0
    assert r["values_sampled"] > 0  # data ages were measured
    assert all(b > 0 for b in r["bytes_per_s_by_filter"].values())  # bytes on the wire
    assert r["server_cpu_cores"] is not None and r["server_rss_mib"]
    assert r["deflate"] is (peer != "mqtt")
    if peer == "mqtt":
        assert "looplag" not in r
    else:
        assert r["looplag"]["samples"] > 0
        # the server's own count of its work: every device message, frames sent
        assert r["work"]["messages_per_s"] > 0 and r["work"]["frames_per_s"] > 0


@pytest.mark.parametrize("peer", ["ours", "coalesce"])
def test_every_screen_holds_its_snapshot_after_the_join(runs: dict, peer: str) -> None:
    join = runs[f"{peer}|{DEVICES}|{SCREENS}|nodb|z"]["join"]
    assert join["tracked"] == SCREENS
    assert join["never"] == 0
    assert 0 < join["all_s"] <= join["window_s"] + 0.01
    assert join["bytes_per_screen"] > 0
    assert join["looplag"]["samples"] > 0


@pytest.mark.parametrize("peer", ["naive", "mqtt"])
def test_a_peer_without_snapshots_is_not_timed_for_one(runs: dict, peer: str) -> None:
    assert runs[f"{peer}|{DEVICES}|{SCREENS}|nodb|z"]["join"] == {"tracked": 0}


def test_report_writes_tables_and_plots(runs: dict, tmp_path: pathlib.Path) -> None:
    from bench.scaling_report import write

    res = {
        "quick": True,
        "seconds": 5.0,
        "plan": {
            "ref": (DEVICES, SCREENS),
            "screens": (DEVICES, [SCREENS]),
            "devices": ([DEVICES], SCREENS),
            "join": SCREENS,
            "procs": 1,
        },
        "runs": runs,
    }
    docs = tmp_path / "benchmarks.md"
    write(res, quick=True, docs=docs, img=tmp_path / "img")
    text = docs.read_text()
    for section in ("scaling-reference", "scaling-screens", "scaling-devices", "join-wave"):
        assert f"<!-- bench:{section} -->" in text
    for name in ("ours", "coalescing peer", "naive peer", "MQTT"):
        assert f"| {name} |" in text
    assert "loop lag p99 / max" in text
    for png in ("scaling-screens.png", "scaling-devices.png"):
        assert (tmp_path / "img" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peer_deadbands_follow_the_gateways_rule() -> None:
    """The peers' deadbands decide like the gateway's state (same table, same rule:
    against the last accepted value)."""
    from bench.peers import DEADBAND_TABLE, Deadbands
    from gateway.core.state import Deadband

    rng = random.Random(7)
    peer = Deadbands(True)
    for field, kind, v in DEADBAND_TABLE:
        band = Deadband(**{kind: v})
        accepted = None
        for _ in range(300):
            value = round(
                rng.uniform(0, 100) if accepted is None else accepted + rng.gauss(0, v), 3
            )
            news = peer.news("t", {field: value})
            expect = accepted is None or (
                value != accepted and not band.suppresses(accepted, value)
            )
            assert (field in news) is expect, (field, accepted, value)
            if expect:
                accepted = value
