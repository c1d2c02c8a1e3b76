"""Junk before the handshake, slowloris, and connection floods: refused cheaply while
everyone else is served."""

from __future__ import annotations

import os
import pathlib
import socket
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from gateway.app import Gateway
from tests.serve.rawws import RawWs


def rss() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def push_until_refused(port: int, data: bytes, total: int) -> tuple[int, bytes]:
    """Send up to ``total`` bytes of ``data`` repeated; (bytes accepted, reply)."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    sent = 0
    try:
        while sent < total:
            sent += await sock.send(data)
    except OSError:  # reset or broken pipe: the gateway hung up
        pass
    reply = b""
    with trio.move_on_after(2):
        try:
            while chunk := await sock.recv(65536):
                reply += chunk
        except OSError:
            pass
    sock.close()
    return sent, reply


async def test_junk_before_the_handshake_is_refused_and_memory_stays_flat(
    gateway: Gateway,
) -> None:
    gw = gateway
    before = rss()
    noise = os.urandom(1 << 16)
    sent, reply = await push_until_refused(gw.port, noise, 10 << 20)
    assert sent < 10 << 20  # hung up long before the end
    assert reply == b"" or reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431"))
    huge = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (1 << 20)
    sent, reply = await push_until_refused(gw.port, huge, len(huge))
    assert reply.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), reply[:40]
    results: list[int] = []

    async def flood() -> None:  # 100 MB on 10 sockets
        results.append((await push_until_refused(gw.port, noise, 10 << 20))[0])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(flood)
            ok = await RawWs.connect(gw.port)  # served during the flood
            assert (await ok.recv_json())["type"] == "welcome"
            ok.close()
    assert all(n < 10 << 20 for n in results)
    assert rss() - before < 20 << 20, (rss() - before) >> 20
    assert gw.server.stats.handshake_rejected["bad_request"] >= 11
    assert gw.server.stats.internal_errors == 0


async def test_slowloris_is_cut_at_the_handshake_deadline_while_others_connect(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"handshake_timeout_s": 1.0})
    request = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    closed_after: list[float] = []

    async def loris() -> None:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", gw.port))
        start = trio.current_time()
        try:
            for byte in request:  # one byte every 100 ms: never a whole request
                await sock.send(bytes([byte]))
                await trio.sleep(0.1)
        except OSError:
            pass
        with trio.move_on_after(3):
            try:
                while await sock.recv(4096):
                    pass
            except OSError:
                pass
        closed_after.append(trio.current_time() - start)
        sock.close()

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(loris)
        with trio.fail_after(5):  # every loris holds its connection
            while gw.server._open < 200:
                await trio.sleep(0.01)
        for _ in range(3):  # a normal screen still connects within a second
            with trio.fail_after(1.0):
                ws = await RawWs.connect(gw.port)
                assert (await ws.recv_json())["type"] == "welcome"
            ws.close()
            await trio.sleep(0.2)  # deliberate: the next try later in the lorises' 1 s
    assert len(closed_after) == 200
    assert max(closed_after) < 1.0 + 0.8, max(closed_after)
    assert gw.server.stats.handshake_rejected["timeout"] == 200


async def test_over_the_connection_limits_503_before_the_upgrade_and_others_are_served(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections": 50})
    held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(50)]
    try:
        with trio.fail_after(2):  # bare TCP connections count: they hold a socket
            while gw.server._open < 50:
                await trio.sleep(0.01)
        refused = await RawWs.connect(gw.port)
        assert refused.status == 503
        refused.close()
    finally:
        for s in held:
            s.close()
    with trio.fail_after(2):
        while True:  # the held sockets are gone: served again
            ws = await RawWs.connect(gw.port)
            if ws.status == 101:
                break
            ws.close()
            await trio.sleep(0.05)
    assert (await ws.recv_json())["type"] == "welcome"
    ws.close()
    assert gw.server.stats.handshake_rejected["limit_total"] >= 1


async def test_over_the_new_connection_rate_503_and_the_gateway_stays_responsive(
    autojump_clock: trio.testing.MockClock, gateway_factory: Callable[..., Any]
) -> None:
    # virtual time: the burst takes no time at all, whatever the machine's load; the
    # clock jumps only after 20 ms of real idleness (bytes on loopback arrive first)
    autojump_clock.autojump_threshold = 0.02
    gw: Gateway = await gateway_factory(server={"max_new_connections_per_s": 20})
    statuses = []
    for _ in range(60):  # a burst far over 20 a second
        ws = await RawWs.connect(gw.port)
        statuses.append(ws.status)
        ws.close()
    # the bucket's 20 tokens (and what a few 10 ms autojumps refill), then 503s
    assert 20 <= statuses.count(101) <= 22 and statuses.count(503) >= 38
    assert gw.server.stats.handshake_rejected["limit_rate"] == statuses.count(503)
    await trio.sleep(1.0)  # one second of virtual time: the bucket is full again
    ws = await RawWs.connect(gw.port)
    assert ws.status == 101 and (await ws.recv_json())["type"] == "welcome"
    ws.close()


async def test_screens_leaving_all_at_once_take_turns_and_count_no_send_failure(
    gateway: Gateway,
) -> None:
    """A mass departure (a proxy restarts, the wall's network blinks): every session
    is torn down, in turns rather than in one scheduler batch (2,000 at once held the
    loop up to 250 ms), with no send failure and no internal error counted."""
    gw = gateway
    now = gw.clock.wall()
    for i in range(500):
        gw.store.apply(f"site/d{i:03d}", {"v": i}, now)
    screens = []
    for _ in range(300):
        ws = await RawWs.connect(gw.port)
        assert (await ws.recv_json())["type"] == "welcome"
        await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"], "rate_hz": 20})
        screens.append(ws)
    with trio.fail_after(20):
        while len(gw.server.fanout.sessions) < 300:
            await trio.sleep(0.05)
    for ws in screens:  # they keep getting frames until they leave
        await ws.recv_frame()
    waited = gw.server.session_ctx.turns.waited
    with gw.looplag.window() as lag:
        for ws in screens:
            ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            ws.close()  # all at once, with a reset, frames unread
        with trio.fail_after(20):
            while gw.server.fanout.sessions:
                gw.store.apply("site/d000", {"v": trio.current_time()}, gw.clock.wall())
                await trio.sleep(0.01)  # ticks keep pumping meanwhile
    assert gw.server.session_ctx.turns.waited > waited  # teardowns took turns
    assert sum(gw.server.stats.send_failures.values()) == 0
    assert gw.server.stats.internal_errors == 0
    assert lag.max < 0.5  # generous: CI noise must not fail it
