"""Checkpoints in-process: the epoch survives only a clean shutdown, a checkpoint of
100,000 topics keeps the loop-lag budget, bad files are reported and kept aside, and
a full disk or a read-only directory is counted while serving goes on."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.lowlevel

from gateway import persist
from gateway.app import Gateway, serve
from gateway.core import snapshotfile
from tests.broker import free_port
from tests.gw import make_config
from tests.serve.httpget import http_get


@contextlib.asynccontextmanager
async def running(
    state_dir: Path, sections: dict[str, Any] | None = None, **persist_cfg: Any
) -> AsyncIterator[Gateway]:
    """A gateway with persistence; leaving the block shuts it down gracefully."""
    cfg = make_config(
        persist={"state_dir": str(state_dir), "interval_s": 3600.0, **persist_cfg},
        **(sections or {}),
    )
    async with trio.open_nursery() as nursery:
        gw: Gateway = await nursery.start(serve, cfg)
        yield gw
        gw.server.request_shutdown()


@contextlib.asynccontextmanager
async def crashing(
    state_dir: Path, sections: dict[str, Any] | None = None
) -> AsyncIterator[Gateway]:
    """A gateway that ends like a crash: cancelled, no shutdown, no final checkpoint."""
    cfg = make_config(
        persist={"state_dir": str(state_dir), "interval_s": 3600.0}, **(sections or {})
    )
    async with trio.open_nursery() as nursery:
        gw: Gateway = await nursery.start(serve, cfg)
        yield gw
        nursery.cancel_scope.cancel()


def fill(gw: Gateway, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        gw.store.apply(f"site/{i % 10}/dev/{i}", {"t": i * 0.5, "n": i}, 1000.0, device_ts=999.0)


async def metric(gw: Gateway, line_start: str) -> float:
    status, _, body = await http_get(gw.admin_port, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not on /metrics")


async def test_epoch_kept_after_clean_shutdown_only_and_once(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        fill(gw, 20)
        first = gw.store.epoch
        seqs = {st.topic: st.seq for st in gw.store.states()}
    assert (tmp_path / persist.CLEAN).exists()
    async with crashing(tmp_path) as gw:
        assert gw.store.epoch == first
        assert not (tmp_path / persist.CLEAN).exists()  # consumed before serving
        assert gw.persister is not None and gw.persister.stats.restored_topics == 20
        for st in gw.store.states():
            assert st.stale and st.seq == seqs[st.topic] + 1 and st.device_ts == 999.0
        gw.store.apply("site/0/dev/0", {"t": -1.0}, 2000.0)  # seen by nobody, lost by a crash
    async with running(tmp_path) as gw:
        # the crash: the checkpoint is older than what clients may have seen: new epoch
        assert gw.store.epoch != first
        st = gw.store.get("site/0/dev/0")
        assert st is not None and st.fields == {"t": 0.0, "n": 0} and st.stale
        second = gw.store.epoch
    async with running(tmp_path) as gw:
        assert gw.store.epoch == second


async def test_a_restored_device_keeps_its_freshness_until_its_own_deadline(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as gw:
        now = gw.clock.wall()
        for i in range(5):  # a learned interval of 10 s: stale after 30 s of silence
            gw.store.apply(f"dev/{i}", {"v": 1}, now - 10.0)
            gw.store.apply(f"dev/{i}", {"v": 2}, now)
        gw.store.apply("once", {"v": 1}, now)  # no interval: no known limit
        seqs = {st.topic: st.seq for st in gw.store.states()}
    async with running(tmp_path) as gw:
        for i in range(5):  # as if the gateway had never stopped: nothing changed
            st = gw.store.get(f"dev/{i}")
            assert st is not None and not st.stale and st.seq == seqs[st.topic]
            assert st.interval == 10.0 and st.seen_at == now
        once = gw.store.get("once")
        assert once is not None and once.stale and once.seq == seqs["once"] + 1
        assert gw.store.sweep_stale(now + 29.0) == []  # the learned deadline holds
        assert sorted(gw.store.sweep_stale(now + 31.0)) == [f"dev/{i}" for i in range(5)]
        gw.store.apply("dev/0", {"v": 3}, now + 32.0)  # ... and a device that speaks is fresh
    # the data source is down at start (nothing listens): the first failed attempt
    # marks every restored device stale, as in any outage
    dead = {"mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "reconnect_min_s": 30.0}}
    async with running(tmp_path, dead) as gw:
        st = gw.store.get("dev/0")
        assert st is not None and st.interval
        with trio.fail_after(10):
            while not all(s.stale for s in gw.store.states()):
                await trio.sleep(0.01)
        assert gw.mqtt is not None and not gw.mqtt.connected


OPERATOR = "operator-token-0123456789"
ALARMING = {
    "alarms": {
        "rules": [
            {"name": "hot", "filter": "plant/#", "condition": "high", "field": "t",
             "threshold": 50, "hysteresis": 5, "severity": "critical"},
        ]
    },
    "auth": {
        "mode": "static",
        "tokens": [{"name": "op1", "token": OPERATOR, "grants": ["#"], "ack": True}],
    },
}  # fmt: skip
BEARER = {"Authorization": f"Bearer {OPERATOR}"}
HOT = "$alarms/hot/plant/oven"


async def open_alarms(gw: Gateway) -> list[dict[str, Any]]:
    status, _, body = await http_get(gw.port, "/api/alarms", BEARER)
    assert status == 200
    alarms: list[dict[str, Any]] = orjson.loads(body)["alarms"]
    return alarms


@pytest.mark.parametrize("restart", ["graceful", "crash"])
async def test_an_acknowledged_alarm_survives_a_restart_and_clears_normally(
    tmp_path: Path, restart: str
) -> None:
    from tests.serve.rawws import RawWs

    async with contextlib.AsyncExitStack() as stack:
        stop = (
            running(tmp_path, ALARMING) if restart == "graceful" else crashing(tmp_path, ALARMING)
        )
        gw = await stack.enter_async_context(stop)
        gw.store.apply("plant/oven", {"t": 60.0}, gw.clock.wall())
        ws = await RawWs.connect(gw.port, headers=BEARER)
        try:
            await ws.recv_json()  # welcome
            await ws.send_json({"type": "ack_alarm", "id": "a1", "alarms": [HOT]})
            assert (await ws.recv_json())["type"] == "ack"
        finally:
            ws.close()
        before = await open_alarms(gw)
        assert [(a["alarm"], a["state"], a["acked_by"]) for a in before] == [
            (HOT, "active_acked", "op1")
        ]
        assert gw.persister is not None and await gw.persister.checkpoint(gw.store)
    async with running(tmp_path, ALARMING) as gw:
        assert (gw.persister is not None and gw.persister.stats.epoch_kept) is (
            restart == "graceful"
        )
        assert await open_alarms(gw) == before  # state, raise, acknowledgement intact
        alarm = gw.insight.alarms.get(HOT)
        assert alarm is not None and alarm.state == "active_acked" and alarm.acked_by == "op1"
        assert await metric(gw, 'gateway_alarms_active{severity="critical"}') == 1
        assert await metric(gw, 'gateway_alarms_unacknowledged{severity="critical"}') == 0
        now = gw.clock.wall()
        gw.store.apply("plant/oven", {"t": 47.0}, now)  # within the hysteresis: still active
        assert gw.store.get(HOT).fields["state"] == "active_acked"  # type: ignore[union-attr]
        gw.store.apply("plant/oven", {"t": 40.0}, now)  # the value returns: cleared, normal
        doc = gw.store.get(HOT)
        assert doc is not None and doc.fields["state"] == "normal"
        assert doc.fields["acked_by"] == "op1" and doc.fields["cleared_value"] == 40.0
        assert await open_alarms(gw) == []
        assert await metric(gw, 'gateway_alarms_active{severity="critical"}') == 0


async def test_an_alarm_whose_rule_is_gone_after_a_restart_is_listed_by_all(
    tmp_path: Path,
) -> None:
    """docs/alarms.md: an alarm whose rule left the configuration is set to normal
    with rule_removed; `/api/alarms?all=1` ("every alarm") left it out, since the
    engine has no alarm for it (found by an outside check)."""
    async with running(tmp_path, ALARMING) as gw:
        gw.store.apply("plant/oven", {"t": 60.0}, gw.clock.wall())
        gw.store.apply("plant/fridge", {"t": 4.0}, gw.clock.wall())
    other_rule = {"alarms": {"rules": [{**ALARMING["alarms"]["rules"][0], "name": "warm"}]}}
    async with running(tmp_path, {**ALARMING, **other_rule}) as gw:
        gw.store.apply("plant/oven", {"t": 61.0}, gw.clock.wall())
        status, _, body = await http_get(gw.port, "/api/alarms?all=1", BEARER)
        assert status == 200
        got = {a["alarm"]: a for a in orjson.loads(body)["alarms"]}
        assert set(got) == {HOT, "$alarms/warm/plant/oven"}
        assert got[HOT]["state"] == "normal" and got[HOT]["rule_removed"] is True
        assert got["$alarms/warm/plant/oven"]["state"] == "active_unacked"
        assert next(iter(got)) == "$alarms/warm/plant/oven"  # active first
        assert [a["alarm"] for a in await open_alarms(gw)] == ["$alarms/warm/plant/oven"]


@pytest.mark.parametrize("qos", [0, 1])
async def test_the_brokers_retained_online_does_not_make_a_silent_device_look_alive(
    tmp_path: Path, mosquitto: Any, qos: int
) -> None:
    """The README's device that spoke once (one data message, its status retained):
    after a graceful restart it is stale, and the broker's retained ``online``, sent
    again on the new subscription, leaves it so (it cleared ``stale`` and rewrote
    ``rx``, and a device silent for a long time looked fresh for a stale limit after
    every restart: found by an outside check). QoS 0 comes through our own framing,
    QoS 1 through paho."""
    from tests.ingest.test_mqtt import FAST, until_subscribed

    mqtt = {"mqtt": {"url": mosquitto.url, **FAST}}
    async with running(tmp_path / "state", mqtt) as gw:
        await until_subscribed(gw)
        await mosquitto.publish("telemetry/site/meter", '{"kwh": 12.5}', qos=qos)
        await mosquitto.publish("status/site/meter", "online", retain=True, qos=qos)
        with trio.fail_after(10):
            while (st := gw.store.get("site/meter")) is None or st.online is not True:
                await trio.sleep(0.01)
        rx = st.changed_at
    async with running(tmp_path / "state", mqtt) as gw:
        st = gw.store.get("site/meter")
        assert st is not None and st.stale  # spoke once: no known limit, stale at once
        seq = st.seq
        await until_subscribed(gw)
        with trio.fail_after(10):  # the broker's stored status comes with the SUBACK
            while gw.store.stats.retained_old < 1:
                await trio.sleep(0.01)
        st = gw.store.get("site/meter")
        assert st is not None and st.stale and st.online is True
        assert st.seq == seq and st.changed_at == rx
        await mosquitto.publish("telemetry/site/meter", '{"kwh": 12.5}', qos=qos)  # it speaks
        with trio.fail_after(10):
            while gw.store.get("site/meter").stale:  # type: ignore[union-attr]
                await trio.sleep(0.01)


async def test_a_stale_rule_raises_on_a_device_the_restore_marks_stale(tmp_path: Path) -> None:
    rule = {"name": "silent", "filter": "batt/#", "condition": "stale"}
    sections = {"alarms": {"rules": [rule]}}
    async with running(tmp_path, sections) as gw:
        gw.store.apply("batt/7", {"v": 3.6}, gw.clock.wall())  # spoke once: no known limit
    async with running(tmp_path, sections) as gw:
        st = gw.store.get("batt/7")
        assert st is not None and st.stale
        doc = gw.store.get("$alarms/silent/batt/7")
        assert doc is not None and doc.fields["state"] == "active_unacked"
        gw.store.apply("batt/7", {"v": 3.5}, gw.clock.wall())  # speaks again: clears
        assert doc.fields["state"] == "cleared_unacked"


async def test_chart_history_before_a_graceful_restart_equals_history_after(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as gw:
        now = gw.clock.wall()
        for k in range(120):  # two minutes of a chart, two fields on each of 50 devices
            for i in range(50):
                gw.store.apply(
                    f"site/{i % 5}/dev/{i}", {"t": i + k / 7, "p": k % 13}, now - 120 + k
                )
            await trio.lowlevel.checkpoint()
        history = gw.insight.history
        assert history.stats.series == 100
        before = {
            (t, f): history.query(t, f, 600, now)
            for t in history.topics()
            for f in history.fields(t)
        }
        status, _, body = await http_get(gw.port, "/api/history?topic=site/3/dev/8&seconds=60")
        assert status == 200
    async with running(tmp_path) as gw:
        history = gw.insight.history
        after = {
            (t, f): history.query(t, f, 600, now)
            for t in history.topics()
            for f in history.fields(t)
        }
        assert after == before
        assert history.stats.series == 100
        status, _, again = await http_get(gw.port, "/api/history?topic=site/3/dev/8&seconds=60")
        assert status == 200
        # served from the restored rings (each window ends at the second it was asked in)
        doc, old = orjson.loads(again), orjson.loads(body)
        shift = round(doc["start"] - old["start"])
        assert 0 <= shift < 30
        assert doc["fields"]["t"]["last"][: 60 - shift] == old["fields"]["t"]["last"][shift:]
        assert doc["fields"]["t"]["last"][0] is not None


async def test_checkpoint_and_restore_of_100k_topics_keep_the_loop_lag_budget(
    tmp_path: Path,
) -> None:
    n = 100_000
    async with running(tmp_path) as gw:
        for start in range(0, n, 2000):
            fill(gw, 2000, start)
            await trio.lowlevel.checkpoint()
        assert gw.persister is not None
        with gw.looplag.window() as w:
            assert await gw.persister.checkpoint(gw.store)
        stats = gw.persister.stats
        print(
            f"checkpoint of {n} topics: {stats.last_bytes / 1e6:.1f} MB in "
            f"{stats.last_duration_s:.2f} s; loop lag p99 {w.quantile(0.99) * 1000:.1f} ms, "
            f"max {w.max * 1000:.1f} ms over {w.count} samples"
        )
        assert w.count > 10 and w.max < 0.5 and w.quantile(0.99) <= 0.25
    async with running(tmp_path) as gw:
        assert len(gw.store) == n and gw.persister is not None
        lag = gw.looplag.total  # from before the restore to now
        print(f"restore of {n} topics: loop lag max {lag.max * 1000:.1f} ms")
        assert lag.max < 0.5


def damaged(valid: bytes, kind: str) -> bytes:
    return {
        "truncated": valid[: len(valid) // 2],
        "corrupt": valid[:-3] + b"zzz",
        "version": valid[:8] + b"\x63\x00" + valid[10:],  # version 99 (header CRC fixed below)
    }[kind]


def with_header_crc(data: bytes) -> bytes:
    import struct
    import zlib

    return data[:24] + struct.pack("<I", zlib.crc32(data[:24])) + data[28:]


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "version", "unreadable"])
async def test_a_bad_checkpoint_is_reported_kept_aside_and_the_gateway_serves(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as gw:
        fill(gw, 10)
    path = tmp_path / persist.CHECKPOINT
    if kind == "unreadable":
        path.unlink()
        path.mkdir()  # reading it fails with EISDIR: unreadable, as a permission error is
        (path / "inside").write_bytes(b"keep me")
    else:
        bad = damaged(path.read_bytes(), kind)
        path.write_bytes(with_header_crc(bad) if kind == "version" else bad)
    before = listing(tmp_path)
    caplog.set_level(logging.INFO, "gateway.persist")
    async with running(tmp_path) as gw:
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1 and str(path) in lines[0] and f"({kind}:" in lines[0], lines
        aside = [tmp_path / p for p in listing(tmp_path) if p.startswith("state.ckpt.bad-")]
        assert len(aside) == 1 and aside[0].name.startswith(f"state.ckpt.bad-{kind}-")
        assert str(aside[0]) in lines[0]
        if kind == "unreadable":
            assert (aside[0] / "inside").read_bytes() == b"keep me"
        else:
            assert aside[0].read_bytes() == (with_header_crc(bad) if kind == "version" else bad)
        assert len(gw.store) == 0  # started empty ...
        status, _, _ = await http_get(gw.port, "/healthz")
        assert status == 200  # ... and serves
        assert await metric(gw, f'gateway_checkpoint_bad_files_total{{reason="{kind}"}}') == 1
        fill(gw, 3)
        assert gw.persister is not None and await gw.persister.checkpoint(gw.store)
    assert len(before) == 3  # the bad file, the clean marker of the first run, the lock
    assert snapshotfile.parse(path.read_bytes()).meta["topics"] == 3


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up) needs root")
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a small tmpfs failed (no CAP_SYS_ADMIN in this container?)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_full_disk_is_counted_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "small", "64k") as state_dir:
        async with running(state_dir) as gw:
            fill(gw, 3000)  # a few hundred kB
            assert gw.persister is not None
            assert not await gw.persister.checkpoint(gw.store)
            assert gw.persister.stats.failures["disk_full"] == 1
            assert any("disk_full" in r.getMessage() for r in caplog.records)
            assert listing(state_dir) == [persist.LOCK]  # the partial temporary file is gone
            assert await metric(gw, 'gateway_checkpoint_failures_total{reason="disk_full"}') == 1
            status, _, _ = await http_get(gw.port, "/api/snapshot?filter=site/1/%23")
            assert status == 200
        assert not (state_dir / persist.CLEAN).exists()  # the final one failed too: no marker


async def test_a_read_only_directory_is_counted_and_serving_goes_on(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount
        ctx: contextlib.AbstractContextManager[Path] = tmpfs(tmp_path / "ro", "1m")
        reason = "read_only"
    else:
        ctx = contextlib.nullcontext(tmp_path / "ro")
        reason = "permission"
    with ctx as state_dir:
        if reason == "read_only":
            remount_read_only(state_dir)
        else:
            state_dir.mkdir()
            state_dir.chmod(0o555)
        async with running(state_dir) as gw:
            fill(gw, 10)
            assert gw.persister is not None
            assert not await gw.persister.checkpoint(gw.store)
            assert gw.persister.stats.failures[reason] == 1
            status, _, _ = await http_get(gw.port, "/healthz")
            assert status == 200


async def test_a_second_gateway_on_the_same_state_directory_refuses_to_start(
    tmp_path: Path,
) -> None:
    """Two gateways on one directory restored each other's fleets, took over each
    other's epochs and broke each other's writes (found by an outside check): the
    second one now refuses to start, naming the first; the next run after the first
    ends gets the directory (and, in another process, the same refusal: the CLI's
    one-line error)."""
    async with running(tmp_path) as first:
        fill(first, 5)
        with pytest.raises(BaseExceptionGroup) as err:  # from running()'s nursery
            async with running(tmp_path):
                raise AssertionError("the second gateway started")
        group = err.value.subgroup(lambda e: isinstance(e, OSError))
        assert group is not None, err.value
        while isinstance(group, BaseExceptionGroup):
            (group,) = group.exceptions
        assert group.errno == errno.EBUSY
        assert f"in use by another gateway (pid {os.getpid()})" in str(group)
        proc = await trio.run_process(
            [sys.executable, "-m", "gateway", "run", "--port", "0", "--admin-port", "0",
             "--state-dir", str(tmp_path), "--status-interval", "0"],
            capture_stderr=True, check=False,
        )  # fmt: skip
        text = proc.stderr.decode()
        assert proc.returncode == 1 and f"(pid {os.getpid()})" in text, text
        assert "Traceback" not in text
        assert (tmp_path / persist.LOCK).read_text() == f"{os.getpid()}\n"
    async with running(tmp_path) as again:  # the first one's end freed it
        assert again.store.epoch == first.store.epoch
        assert len(again.store) == 5


def test_the_persist_section_is_validated_and_read_from_the_environment() -> None:
    from gateway.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"persist\.interval_s: must be > 0"):
        load_config(overrides={"persist": {"interval_s": 0}})
    with pytest.raises(ConfigError, match=r"persist\.state: unknown key"):
        load_config(overrides={"persist": {"state": "x"}})
    cfg = load_config(
        env={"GATEWAY_PERSIST_STATE_DIR": "/tmp/x", "GATEWAY_PERSIST_INTERVAL_S": "5"}
    )
    assert (cfg.persist.state_dir, cfg.persist.interval_s) == ("/tmp/x", 5.0)
    assert load_config().persist.state_dir == ""  # off unless configured
