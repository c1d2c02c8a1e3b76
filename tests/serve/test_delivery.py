"""Snapshot then deltas over a real socket; slow screens; resume."""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson
import trio
from trio_websocket import open_websocket_url

from gateway.app import Gateway
from gateway.client import GatewayClient
from gateway.core.mirror import Mirror
from gateway.core.state import Delta, Snapshot

from .conftest import url
from .rawws import RawWs


def gateway_view(gw: Gateway, prefix: str = "") -> dict[str, tuple]:
    return {
        st.topic: (st.seq, st.fields, st.online, st.stale)
        for st in gw.store.states()
        if st.seq and st.topic.startswith(prefix)
    }


def client_view(m: Mirror) -> dict[str, tuple]:
    return {t: (x.seq, x.fields, x.online, x.stale) for t, x in m.topics.items()}


async def test_snapshot_then_deltas_rebuild_the_gateway_state(gateway: Gateway) -> None:
    gw = gateway
    for i in range(50):
        gw.store.apply(f"site/a/d{i}", {"t": float(i), "mode": "run"}, gw.clock.wall())
    client = GatewayClient(url(gw), ["site/#"], rate_hz=20)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(5):
            await client.wait_until(lambda m: len(m.topics) == 50)
        for step in range(30):
            gw.store.apply(f"site/a/d{step % 7}", {"t": step * 1.5, "x": None}, gw.clock.wall())
            gw.store.apply(
                "site/b/new", {"n": step, "gone": step if step % 2 else None}, gw.clock.wall()
            )
            if step % 5 == 0:
                gw.store.set_presence(f"site/a/d{step}", step % 10 == 0, gw.clock.wall())
            await trio.sleep(0.01)
        with trio.fail_after(5):
            await client.wait_until(lambda m: client_view(m) == gateway_view(gw))
        assert client.mirror.gaps == 0
        nursery.cancel_scope.cancel()


async def test_a_stalled_screen_neither_delays_others_nor_grows_memory(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(
        server={"stall_s": 1.0, "close_timeout_s": 5.0, "tick_hz": 20, "default_rate_hz": 20}
    )
    big = "x" * 20_000  # 20 KB per update: a stalled socket fills within a few ticks
    gw.store.apply("plant/line", {"blob": big, "n": 0}, gw.clock.wall())
    got: list[Snapshot | Delta] = []
    healthy = GatewayClient(url(gw), ["plant/#"], rate_hz=20, on_update=got.append)
    peak_queue = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(healthy.run)
        with trio.fail_after(5):
            await healthy.wait_until(lambda m: "plant/line" in m.topics)
        stalled = await RawWs.connect(gw.port, rcvbuf=4096)
        await stalled.recv_json()  # welcome
        await stalled.send_json({"type": "subscribe", "id": "s", "filters": ["plant/#"]})
        slow_session = newest_session(gw)
        (group,) = gw.hub._groups.values()  # both screens share one stream
        first_tick = group.tick_no
        received_before = len(got)
        n = 0
        with trio.fail_after(20):
            while not gw.hub.stats.slow:  # the slow decision (the disconnect follows)
                n += 1
                gw.store.apply(
                    "plant/line", {"blob": big[:-1] + str(n % 10), "n": n}, gw.clock.wall()
                )
                peak_queue = max(peak_queue, slow_session.out.queued_bytes)
                # wait for the next tick: the healthy screen must get this change on its own
                await trio.sleep(0.05)
        last = gw.store.get("plant/line").seq  # type: ignore[union-attr]
        with trio.fail_after(5):
            await healthy.wait_until(lambda m: m.topics["plant/line"].seq == last)
        # the stalled screen gets its close frame once it reads again
        with trio.fail_after(10):
            code = await stalled.close_code_at_end()
        stalled.close()
        nursery.cancel_scope.cancel()
    assert code == 4008
    # the healthy screen got one delta per tick of the shared stream, each continuing
    # exactly where the previous one ended: nothing was held back or folded for it
    deltas = got[received_before:]
    assert all(isinstance(d, Delta) for d in deltas)
    assert len(deltas) >= group.tick_no - first_tick > 10
    assert all(b.base == a.seq for a, b in itertools.pairwise(deltas))  # type: ignore[union-attr]
    assert deltas[-1].seq == last
    # the stalled screen's queue never held more than one take's worth of frames
    assert peak_queue <= 2 * 21_000
    assert gw.hub.stats.slow.get("stalled") == 1
    assert gw.server.stats.send_failures["stalled"] == 1


def newest_session(gw: Gateway) -> Any:
    return max(gw.server._sessions, key=lambda s: s.opened_at)


async def _collect(ws: Any, quiet_s: float = 0.3) -> list[dict]:
    out: list[dict] = []
    while True:
        with trio.move_on_after(quiet_s) as idle:
            data = await ws.get_message()
        if idle.cancelled_caught:
            return out
        msg = orjson.loads(data)
        out.extend(msg["items"] if msg["type"] == "batch" else [msg])


async def test_resume_same_epoch_sends_only_the_delta_and_new_epoch_a_snapshot(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory()
    for i in range(5):
        gw.store.apply(f"s/{i}", {"v": i}, gw.clock.wall())
    sub = orjson.dumps({"type": "subscribe", "id": "a", "filters": ["s/#"]}).decode()
    async with open_websocket_url(url(gw)) as ws:
        welcome = orjson.loads(await ws.get_message())
        await ws.send_message(sub)
        first = await _collect(ws)
    snapshots = {m["topic"]: m["seq"] for m in first if m["type"] == "snapshot"}
    assert len(snapshots) == 5
    gw.store.apply("s/3", {"v": 33}, gw.clock.wall())
    async with open_websocket_url(url(gw)) as ws:
        assert orjson.loads(await ws.get_message())["epoch"] == welcome["epoch"]
        await ws.send_message(
            orjson.dumps(
                {"type": "resume", "epoch": welcome["epoch"], "topics": snapshots}
            ).decode()
        )
        await ws.send_message(sub)
        again = await _collect(ws)
    state = [m for m in again if m["type"] in ("snapshot", "delta")]
    assert state == [
        {
            "type": "delta",
            "topic": "s/3",
            "base": snapshots["s/3"],
            "seq": snapshots["s/3"] + 1,
            "set": {"v": 33},
            "ts": None,
            "rx": state[0]["rx"],
        }
    ]
    assert {"type": "ack", "op": "resume", "resumed": True} in again
    # a restarted gateway has a new epoch: the same resume yields snapshots
    gw2: Gateway = await gateway_factory()
    for i in range(5):
        gw2.store.apply(f"s/{i}", {"v": i}, gw2.clock.wall())
    async with open_websocket_url(url(gw2)) as ws:
        assert orjson.loads(await ws.get_message())["epoch"] != welcome["epoch"]
        await ws.send_message(
            orjson.dumps(
                {"type": "resume", "epoch": welcome["epoch"], "topics": snapshots}
            ).decode()
        )
        await ws.send_message(sub)
        fresh = await _collect(ws)
    assert {"type": "ack", "op": "resume", "resumed": False} in fresh
    assert sorted(m["topic"] for m in fresh if m["type"] == "snapshot") == [
        f"s/{i}" for i in range(5)
    ]
    assert not [m for m in fresh if m["type"] == "delta"]


async def test_a_screen_that_vanishes_with_data_unread_counts_as_gone_not_as_an_error(
    gateway: Gateway,
) -> None:
    gw = gateway
    for i in range(200):
        gw.store.apply(f"site/a/d{i}", {"v": i, "pad": "x" * 200}, gw.clock.wall())
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    await trio.lowlevel.wait_readable(ws.sock)  # the snapshot arrives, and stays unread
    # closing with unread data sends a reset, as a killed browser tab or process does
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close()
    with trio.fail_after(5):
        while gw.server.connections:
            gw.store.apply("site/a/d0", {"v": trio.current_time()}, gw.clock.wall())
            await trio.sleep(0.05)
    assert gw.server.stats.disconnects["client_gone"] == 1
    assert gw.server.stats.disconnects["error"] == 0
