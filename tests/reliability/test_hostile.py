"""Hostile clients: each attack is bounded in memory, cut at its deadline or refused,
counted, while a normal screen is served and the event loop keeps its pace.

After every attack: RSS growth under the documented budget (docs/operations.md),
the trio task count back to where it was, loop lag within a generous bound, and no
internal error."""

from __future__ import annotations

import base64
import math
import os
import pathlib
import socket
import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
import trio

from gateway.app import Gateway
from tests.serve.httpget import http_get
from tests.serve.rawws import RawWs

LAG_BOUND_S = 0.5  # generous: the budget is 100 ms max, CI machines are noisy
MIB = 1 << 20


def rss() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def task_count() -> int:
    stack = [trio.lowlevel.current_root_task()]
    n = 0
    while stack:
        task = stack.pop()
        n += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


async def tasks_settle(at_most: int) -> None:
    """Wait (bounded) until the task count is back to ``at_most``."""
    with trio.fail_after(10):
        while task_count() > at_most:
            await trio.sleep(0.05)


async def served(gw: Gateway, state: bool = True) -> None:
    """A normal screen: opens, subscribes, gets state (when the gateway has some)."""
    with trio.fail_after(5):
        ws = await RawWs.connect(gw.port)
        try:
            assert (await ws.recv_json())["type"] == "welcome"
            await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
            assert (await ws.recv_json())["type"] == "ack"
            if state:
                assert (await ws.recv_json())["type"] in ("batch", "snapshot")
        finally:
            ws.close()


async def screen_throughout(gw: Gateway, done: trio.Event, count: list[int]) -> None:
    while not done.is_set():
        await served(gw)
        count[0] += 1
        await trio.sleep(0.2)


async def jwt_screen_throughout(gw: Gateway, done: trio.Event, count: list[int]) -> None:
    token = jwt.encode({"sub": "wall", "exp": int(time.time()) + 600, "topics": ["#"]}, "s" * 40)
    while not done.is_set():
        with trio.fail_after(5):
            ws = await RawWs.connect(gw.port, path=f"/ws?access_token={token}")
            assert ws.status == 101
            assert (await ws.recv_json())["type"] == "welcome"
            ws.close()
        count[0] += 1
        await trio.sleep(0.2)


async def raw_connect(port: int, rcvbuf: int = 4096) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return sock


def peer_closed(sock: trio.socket.SocketType) -> bool:
    """The gateway closed or reset this connection (seen without reading from it)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state in (7, 8)  # TCP_CLOSE (reset), TCP_CLOSE_WAIT (its FIN)


async def read_all(sock: trio.socket.SocketType, limit_s: float = 5) -> bytes:
    data = b""
    with trio.move_on_after(limit_s):
        try:
            while chunk := await sock.recv(65536):
                data += chunk
        except OSError:
            pass
    return data


# -- the pong flood ---------------------------------------------------------------------


async def ping_flood(port: int, seconds: float) -> tuple[RawWs, int]:
    """Pings as fast as the socket takes them, never reading, for ``seconds`` (or
    until the gateway hangs up); (the connection, bytes sent)."""
    ws = await RawWs.connect(port, rcvbuf=4096)
    batch = b"".join(RawWs.frame(os.urandom(100), opcode=9) for _ in range(500))
    sent = 0
    with trio.move_on_after(seconds):
        try:
            while True:
                await ws.send_raw(batch)  # whole frames: a partial send would be garbage
                sent += len(batch)
        except OSError:
            pass
    return ws, sent


@pytest.mark.parametrize("auth", ["none", "jwt"])
async def test_a_ping_flood_without_reading_is_closed_4029_and_memory_stays_flat(
    gateway_factory: Callable[..., Any], auth: str
) -> None:
    """Also before authentication: with JWT auth, the flood sends no token at all."""
    gw: Gateway = await gateway_factory(
        simulator={"devices": 50, "rate_hz": 2},
        auth={"mode": auth, **({"jwt_secret": "s" * 40} if auth == "jwt" else {})},
    )
    if auth == "none":
        await served(gw)
    before, tasks = rss(), task_count()
    done, screens = trio.Event(), [0]
    with gw.looplag.window() as lag:
        async with trio.open_nursery() as nursery:
            if auth == "none":
                nursery.start_soon(screen_throughout, gw, done, screens)
            else:  # a screen with a token, over the WebSocket, throughout
                nursery.start_soon(jwt_screen_throughout, gw, done, screens)
            ws, sent = await ping_flood(gw.port, 8.0)
            done.set()
    growth = rss() - before
    with trio.fail_after(5):
        code = await ws.close_code_at_end()
    ws.close()
    print(f"ping flood ({auth}): {sent >> 20} MiB of pings sent, RSS +{growth / MIB:.1f} MiB")
    assert code == 4029  # control frames count toward the message rate
    assert growth < 4 * MIB, growth / MIB  # docs/operations.md: per attacking connection
    assert screens[0] >= 1
    assert lag.max < LAG_BOUND_S, lag.max
    assert gw.server.stats.inbound_rejected["rate"] == 2  # one dropped with a warning, one closes
    assert gw.server.stats.internal_errors == 0
    await tasks_settle(tasks)


async def fragment_flood(port: int, seconds: float, payload: bytes) -> tuple[RawWs, int]:
    """A text frame that never ends: ``payload`` continuation frames (FIN=0) as fast
    as the socket takes them, never reading, for ``seconds`` or until hung up."""
    ws = await RawWs.connect(port, rcvbuf=4096)
    frames = RawWs.frame(payload, 1, fin=False) + b"".join(
        RawWs.frame(payload, 0, fin=False) for _ in range(2000)
    )
    sent = 0
    with trio.move_on_after(seconds):
        while True:
            try:
                await ws.send_raw(frames)
            except OSError:
                break
            sent += len(frames)
            frames = b"".join(RawWs.frame(payload, 0, fin=False) for _ in range(2000))
    return ws, sent


@pytest.mark.parametrize("payload", [b"", b"x"], ids=["empty", "one-byte"])
async def test_endless_fragments_with_no_token_are_closed_and_never_stall_the_loop(
    gateway_factory: Callable[..., Any], payload: bytes
) -> None:
    """Frames outside the message budget were parsed a read at a time: four clients
    with no token sending empty continuation frames held the loop over a second a
    read (found by an outside check). A message now takes at most 128 frames (then
    1008), and a screen with a token is served throughout."""
    gw: Gateway = await gateway_factory(
        simulator={"devices": 50, "rate_hz": 2}, auth={"mode": "jwt", "jwt_secret": "s" * 40}
    )
    done, screens, codes = trio.Event(), [0], []
    with gw.looplag.window() as lag:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(jwt_screen_throughout, gw, done, screens)

            async def attacker() -> None:
                for _ in range(5):  # hung up on: it comes back
                    ws, _ = await fragment_flood(gw.port, 1.0, payload)
                    with trio.fail_after(5):
                        codes.append(await ws.close_code_at_end())
                    ws.close()

            async with trio.open_nursery() as attackers:
                for _ in range(4):
                    attackers.start_soon(attacker)
            done.set()
    assert set(codes) == {1008}, codes  # each after 128 frames, not after 5 s
    assert screens[0] >= 1
    assert lag.max < LAG_BOUND_S, lag.max
    assert gw.server.stats.internal_errors == 0


@pytest.mark.parametrize("when", ["open", "closing"])
async def test_bytes_after_a_frame_that_cannot_be_parsed_are_not_read(
    gateway_factory: Callable[..., Any], when: str
) -> None:
    """After a frame it cannot parse the gateway reads nothing more: its WebSocket
    parser is finished, and everything fed to it would be held unparsed (issue 16: a
    flood that lost frame sync after its 4029 close held +214 MiB). Deterministic: the
    close timeout is long, so only the gateway ceasing to read can stop the flood."""
    gw: Gateway = await gateway_factory(server={"close_timeout_s": 60, "message_burst": 10})
    before, tasks = rss(), task_count()
    ws = await RawWs.connect(gw.port, rcvbuf=4096)
    assert (await ws.recv_json())["type"] == "welcome"
    if when == "closing":  # over the message rate: closed 4029, then the garbage
        await ws.send_raw(RawWs.frame(b"p", opcode=9) * 20)
        with trio.fail_after(5):
            assert await ws.close_code_at_end() == 4029
    await ws.send_raw(RawWs.frame(b"x", opcode=3))  # a reserved opcode: 1002
    junk = os.urandom(1 << 20)
    sent = 0
    with trio.move_on_after(10):
        try:
            while sent < 64 * MIB:
                await ws.send_raw(junk)
                sent += len(junk)
        except OSError:
            pass
    growth = rss() - before
    print(f"garbage while {when}: {sent / MIB:.0f} MiB taken, RSS +{growth / MIB:.1f} MiB")
    if when == "open":
        with trio.fail_after(5):
            assert await ws.close_code_at_end() == 1002
    ws.close()
    # kernel buffers hold a few MiB; the gateway itself holds nothing of it
    assert sent < 32 * MIB, sent / MIB
    assert growth < 4 * MIB, growth / MIB
    assert gw.server.stats.inbound_rejected["bad_frame"] == 1
    assert gw.server.stats.internal_errors == 0
    await tasks_settle(tasks)


async def test_pings_within_the_rate_are_answered_once_each_latest_only(
    gateway_factory: Callable[..., Any],
) -> None:
    """With the rate limit lifted, a flood that never reads holds one pong at most:
    RSS stays flat and the queue never grows past the kernel's share."""
    gw: Gateway = await gateway_factory(
        server={"messages_per_s": 1e9, "message_burst": 1_000_000_000, "send_buffer_bytes": 4096}
    )
    before, tasks = rss(), task_count()
    with gw.looplag.window() as lag:
        ws, sent = await ping_flood(gw.port, 4.0)
    growth = rss() - before
    (session,) = gw.server.fanout.sessions  # still open: nothing it did was over a limit
    queued = session.out.queued_bytes
    ws.close()
    print(f"ping flood, no rate limit: {sent >> 20} MiB sent, RSS +{growth / MIB:.1f} MiB")
    print(f"lag max {lag.max:.3f} s, p99 {lag.quantile(0.99):.3f} s")
    assert sent > 4 * MIB  # it did flood
    assert queued < 64 * 1024, queued  # a pong or two, not one per ping
    assert growth < 4 * MIB, growth / MIB
    assert lag.max < LAG_BOUND_S, lag.max
    await tasks_settle(tasks)
    # a client that reads gets its pong for the latest ping
    ws = await RawWs.connect(gw.port)
    assert (await ws.recv_json())["type"] == "welcome"
    await ws.send_raw(RawWs.frame(b"one", opcode=9) + RawWs.frame(b"two", opcode=9))
    with trio.fail_after(5):
        opcode, payload = await ws.recv_frame()
    assert (opcode, payload) == (10, b"two")
    ws.close()


async def test_answers_never_read_are_capped_by_max_pending_bytes_then_closed_4009(
    gateway_factory: Callable[..., Any],
) -> None:
    """The budget is what the queue really holds: the heap the attack adds (traced)
    stays within a small multiple of it. It was 75 times the budget, when every
    queued pong kept orjson's 4 KiB output buffer."""
    budget = 256 * 1024
    gw: Gateway = await gateway_factory(
        server={
            "messages_per_s": 1e9,
            "message_burst": 1_000_000_000,
            "send_buffer_bytes": 4096,
            "max_pending_bytes": budget,
        }
    )
    await served(gw, state=False)  # the first connection's one-time costs are not its budget
    before, tasks = rss(), task_count()
    ws = await RawWs.connect(gw.port, rcvbuf=4096)
    batch = b"".join(RawWs.frame(b'{"type":"ping","id":1}') for _ in range(200))
    tracemalloc.start()
    try:
        with trio.move_on_after(8):
            try:
                while gw.server.stats.inbound_rejected["pending_bytes"] == 0:
                    await ws.send_raw(batch)
            except OSError:
                pass
        traced, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gw.server.stats.inbound_rejected["pending_bytes"] == 1
    growth = rss() - before
    with trio.fail_after(5):
        code = await ws.close_code_at_end()
    ws.close()
    print(f"answers never read: heap +{traced / MIB:.2f} MiB (peak {peak / MIB:.2f} MiB)")
    assert code == 4009
    assert traced < 2 * budget, traced / MIB  # held at the close: the queue, at most
    assert peak < 4 * budget, peak / MIB  # with what the attack's reading costs meanwhile
    assert growth < 4 * MIB, growth / MIB
    await tasks_settle(tasks)


# -- plain-HTTP responses: deadlines and the bodies' budget -------------------------------


async def test_snapshot_readers_that_never_read_are_cut_and_memory_is_bounded(
    gateway_factory: Callable[..., Any], caplog: Any
) -> None:
    # the default deadlines and budget; kernel buffers bounded per socket as
    # docs/operations.md advises (else the kernel may take a whole 2.4 MB body, and a
    # response the kernel took whole is not the gateway's to cut)
    gw: Gateway = await gateway_factory(server={"send_buffer_bytes": 256 * 1024})
    now = gw.clock.wall()
    label = "x" * 150
    for i in range(10_000):
        gw.store.apply(f"site/{i % 10}/dev-{i:05d}", {"t": 21.5, "h": 40.1, "label": label}, now)
    status, _, body = await http_get(gw.port, "/api/snapshot")
    assert status == 200 and len(body) > 2 * MIB
    await served(gw)
    before, tasks = rss(), task_count()
    peak = [before]
    done, screens = trio.Event(), [0]
    socks: list[trio.socket.SocketType] = []

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            await trio.sleep(0.05)

    stats = gw.server.stats
    with gw.looplag.window() as lag:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            nursery.start_soon(screen_throughout, gw, done, screens)
            start = trio.current_time()
            for _ in range(40):
                sock = await raw_connect(gw.port)
                await sock.send(
                    b"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                )  # and never read
                socks.append(sock)
            sent_all = trio.current_time()
            with trio.fail_after(30):  # every socket cut (or refused) by the gateway
                while not all(peer_closed(sock) for sock in socks):
                    await trio.sleep(0.05)
            took = trio.current_time() - start
            after_last = trio.current_time() - sent_all
            done.set()
    for sock in socks:
        sock.close()
    budget = gw.cfg.server.max_http_pending_bytes
    print(
        f"40 snapshot readers: RSS +{(peak[0] - before) / MIB:.1f} MiB at the peak, cut "
        f"{dict(stats.http_cut)} within {took:.1f} s"
    )
    assert stats.http_cut["write_timeout"] + stats.http_cut["response_timeout"] >= 1
    assert sum(stats.http_cut.values()) == 40
    # each is cut once it made no progress for the write deadline (plus slack)
    assert after_last < gw.cfg.server.http_write_timeout_s + 3.0, after_last
    assert peak[0] - before < budget + 32 * MIB, (peak[0] - before) / MIB
    assert screens[0] >= 1
    assert lag.max < LAG_BOUND_S, lag.max
    assert stats.internal_errors == 0
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    await tasks_settle(tasks)


async def test_a_reader_gone_mid_download_is_client_gone_not_an_internal_error(
    gateway_factory: Callable[..., Any], caplog: Any
) -> None:
    gw: Gateway = await gateway_factory(server={"send_buffer_bytes": 16384})
    now = gw.clock.wall()
    for i in range(5_000):
        gw.store.apply(f"dev-{i:05d}", {"label": "x" * 200}, now)
    tasks = task_count()
    for _ in range(5):
        sock = await raw_connect(gw.port)
        await sock.send(b"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await sock.recv(1000)  # the download has begun
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # gone: a reset
    with trio.fail_after(10):
        while gw.server.stats.http_cut["client_gone"] < 5:
            await trio.sleep(0.05)
    assert gw.server.stats.internal_errors == 0
    assert not [r for r in caplog.records if r.exc_info]
    await tasks_settle(tasks)


# -- keep-alive ---------------------------------------------------------------------------


async def test_keep_alive_serves_pipelined_requests_and_caps_them(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_requests_per_connection": 4})
    tasks = task_count()
    sock = await raw_connect(gw.port, rcvbuf=1 << 16)
    one = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    await sock.send(one * 3)  # pipelined
    data = b""
    with trio.fail_after(5):
        while data.count(b"ok\n") < 3:
            data += await sock.recv(65536)
    assert data.count(b"HTTP/1.1 200") == 3
    assert b"connection: close" not in data.lower()
    await sock.send(one)  # the same connection, later: the 4th and last
    data = await read_all(sock)
    assert data.count(b"HTTP/1.1 200") == 1 and b"connection: close" in data.lower()
    sock.close()
    await tasks_settle(tasks)


# -- a strict upgrade ---------------------------------------------------------------------


def upgrade(method: str = "GET", version: str = "1.1", extra: str = "", body: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"{method} /ws HTTP/{version}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode() + body


async def test_only_a_strict_upgrade_is_accepted(gateway: Gateway) -> None:
    before, tasks = rss(), task_count()
    ping = RawWs.frame(b"", opcode=9)
    cases = [
        ("POST", upgrade("POST", extra="Content-Length: 0\r\n"), 405),
        ("HEAD", upgrade("HEAD"), 405),
        ("HTTP/1.0", upgrade(version="1.0"), 400),
        ("two keys", upgrade(extra="Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 400),
        ("two versions", upgrade(extra="Sec-WebSocket-Version: 13\r\n"), 400),
        ("a body", upgrade(extra=f"Content-Length: {len(ping)}\r\n", body=ping), 400),
        ("chunked", upgrade(extra="Transfer-Encoding: chunked\r\n", body=b"0\r\n\r\n"), 400),
    ]
    for name, request, status in cases:
        sock = await raw_connect(gateway.port, rcvbuf=1 << 16)
        await sock.send(request)
        reply = await read_all(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 %d" % status), (name, reply[:60])
    assert gateway.server.stats.handshake_rejected["bad_upgrade"] == len(cases)
    # the strict one still opens, and bytes sent right behind it reach the WebSocket
    sock = await raw_connect(gateway.port, rcvbuf=1 << 16)
    await sock.send(upgrade() + ping)
    reply = b""
    with trio.fail_after(5):
        while reply.count(b"\x8a\x00") == 0:  # the pong
            reply += await sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 101")
    sock.close()
    await served(gateway, state=False)
    await tasks_settle(tasks)
    assert rss() - before < 4 * MIB
    assert gateway.server.stats.internal_errors == 0


# -- Origin without trusting Host ----------------------------------------------------------


async def test_dns_rebinding_is_refused_on_ws_sse_and_api(gateway: Gateway) -> None:
    tasks = task_count()
    port = gateway.port
    evil = {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}
    ws = await RawWs.connect(port, headers=evil)
    ws.close()
    assert ws.status == 403
    for path in ("/sse?filter=%23", "/api/snapshot", "/api/topics"):
        status, headers, _ = await http_get(port, path, headers=evil)
        assert status == 403, path
        assert "access-control-allow-origin" not in headers
    # the wall's own origin (a page at http://127.0.0.1:P/) and scripts without Origin
    own = f"http://127.0.0.1:{port}"
    status, headers, _ = await http_get(port, "/api/topics", headers={"Origin": own})
    assert status == 200 and headers["access-control-allow-origin"] == own
    status, headers, _ = await http_get(port, "/api/topics")
    assert status == 200 and "access-control-allow-origin" not in headers
    assert gateway.server.stats.handshake_rejected["origin"] == 4
    await tasks_settle(tasks)


async def test_public_origins_name_the_gateway_behind_a_proxy(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"public_origins": ["https://wall.example"]})
    good = {"Origin": "https://wall.example", "Host": "wall.example"}
    ws = await RawWs.connect(gw.port, headers=good)
    ws.close()
    assert ws.status == 101
    assert (await http_get(gw.port, "/api/topics", headers=good))[0] == 200
    other = {"Origin": "https://other.example", "Host": "other.example"}
    assert (await http_get(gw.port, "/api/topics", headers=other))[0] == 403


# -- health endpoints ----------------------------------------------------------------------


async def test_public_readyz_names_no_host_port_or_user(gateway: Gateway) -> None:
    secret = "broker mqtt.internal.example:8883 (user alice-ops) refused: bad password"
    gateway.server.ready_checks["mqtt"] = lambda: (False, secret)
    status, _, body = await http_get(gateway.port, "/readyz")
    assert status == 503
    answer = orjson.loads(body)
    assert answer["ready"] is False and answer["reasons"] == ["mqtt not ready"]
    for word in ("mqtt.internal", "8883", "alice", "password"):
        assert word.encode() not in body, word
    status, _, body = await http_get(gateway.admin_port, "/readyz")
    assert status == 503 and orjson.loads(body)["checks"]["mqtt"]["detail"] == secret


async def test_a_client_streaming_large_messages_is_not_taken_for_a_slow_one(
    gateway_factory: Callable[..., Any],
) -> None:
    """The message deadline ran from the first read that ended inside a message until
    a read ended on a message boundary: a client streaming large messages faster than
    the gateway reads them (its reads then rarely end on a boundary) was closed 1008,
    "fix the client", after message_timeout_s, though every message came whole (found
    by an outside check)."""
    gw: Gateway = await gateway_factory(
        server={"message_timeout_s": 1.0, "messages_per_s": 1e6, "message_burst": 1_000_000}
    )
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()  # welcome
    topics = {f"site/device-{i:05d}/with/a/longer/name": i + 1 for i in range(1200)}
    resume = {"type": "resume", "epoch": gw.store.epoch, "topics": topics}
    message = RawWs.frame(orjson.dumps(resume))
    assert 50_000 < len(message) < 65_536  # never a multiple of a read
    answers, closed = [0], []

    async def read() -> None:
        while True:
            opcode, payload = await ws.recv_frame()
            if opcode in (8, -1):
                closed.append(RawWs.close_code(payload) if opcode == 8 else None)
                return
            if opcode == 1:  # not the gateway's heartbeat Pings
                answers[0] += payload.count(b'"op":"resume"')

    sent = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        with trio.move_on_after(3.0):  # three message deadlines, the socket always full
            while not closed:
                await ws.send_raw(message * 8)
                sent += 8
        with trio.fail_after(20):
            while answers[0] < sent and not closed:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    ws.close()
    assert not closed, closed
    # the batch under way when the time ran out went partly: up to 8 more answers
    assert sent <= answers[0] <= sent + 8 and sent > 100, (answers, sent)
    assert gw.server.stats.inbound_rejected["incomplete"] == 0


async def test_resume_positions_are_kept_only_for_topics_the_gateway_holds(
    gateway_factory: Callable[..., Any],
) -> None:
    """A connection sending resumes of made-up topics before subscribing held ~16 MB
    of positions (found by an outside check): only held topics are kept, keyed by the
    store's own strings."""
    gw: Gateway = await gateway_factory(server={"messages_per_s": 1e6, "message_burst": 10**6})
    for i in range(50):
        gw.store.apply(f"site/d{i}", {"v": i}, gw.clock.wall())
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    epoch = gw.store.epoch
    made_up = {f"nowhere/{i:06d}/a/rather/long/topic/name": 7 for i in range(1000)}
    real = {f"site/d{i}": 1 for i in range(50)}
    for _ in range(50):
        await ws.send_json({"type": "resume", "epoch": epoch, "topics": made_up})
    await ws.send_json({"type": "resume", "epoch": epoch, "topics": real})
    with trio.fail_after(10):
        for _ in range(51):
            assert (await ws.recv_json())["op"] == "resume"
    (session,) = gw.server.fanout.sessions
    assert session.sub is not None
    positions = session.sub.positions
    assert positions == real
    assert all(t is gw.store.get(t).topic for t in positions)  # type: ignore[union-attr]
    ws.close()


async def test_history_churn_neither_stalls_the_loop_nor_queues_without_bound(
    gateway_factory: Callable[..., Any],
) -> None:
    """Ten connections subscribing to `#` with history_s and unsubscribing, ten times
    a second each (within the message rate), stalled the loop for seconds: every
    history went on being built after its subscription was gone, a hundred of them
    runnable at once; and a connection that did not read had hundreds of MB of
    history queued (found by an outside check)."""
    gw: Gateway = await gateway_factory(simulator={"devices": 400, "rate_hz": 2})
    with trio.fail_after(10):
        while len(gw.insight.history.topics()) < 400:
            await trio.sleep(0.1)
    await trio.sleep(2.0)  # a few seconds of history per topic
    subscribe = {"type": "subscribe", "id": "h", "filters": ["#"], "history_s": 86400}
    unsubscribe = {"type": "unsubscribe", "id": "h"}

    async def churn(reading: bool) -> RawWs:
        ws = await RawWs.connect(gw.port, rcvbuf=4096 if not reading else 1 << 20)
        await ws.recv_json()

        async def drain() -> None:
            while reading and (await ws.recv_frame())[0] not in (8, -1):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.move_on_after(3.0):
                while True:
                    await ws.send_json(subscribe)
                    await trio.sleep(0.05)
                    await ws.send_json(unsubscribe)
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        return ws

    before = rss()
    sockets: list[RawWs] = []
    with gw.looplag.window() as lag:
        async with trio.open_nursery() as nursery:

            async def one(reading: bool) -> None:
                sockets.append(await churn(reading))

            for i in range(10):
                nursery.start_soon(one, i > 0)  # the first one never reads
    queued = max(s.out.queued_bytes for s in gw.server.fanout.sessions)
    growth = rss() - before
    for ws in sockets:
        ws.close()
    ms, mib = lag.max * 1000, growth / MIB
    print(f"history churn: lag max {ms:.0f} ms, queued {queued} B, RSS +{mib:.0f} MiB")
    assert lag.max < LAG_BOUND_S, lag.max
    assert queued < 4 * MIB, queued  # the backlog a history waits behind, and a frame
    assert growth < 100 * MIB, growth / MIB


async def test_clients_pipelining_heavy_api_requests_take_turns(
    gateway_factory: Callable[..., Any],
) -> None:
    """Eight keep-alive clients pipelining `/api/history?filter=%23&limit=100` kept
    every scheduler batch full of their steps: 97 % of the loop-lag samples over 10 ms
    (found by an outside check; 12 % with one such request built at a time and a
    topic's window a step; 1 to 3 % here with a field's window a step and each item
    encoded on its own, the clients' work in this loop included; under 1 % with them
    in a process of their own, `bench/hub_stalls_bench.py --only heavyapi`). The bound
    here is generous: the budget is the bench's."""
    from gateway.looplag import BUCKETS

    gw: Gateway = await gateway_factory(simulator={"devices": 2000, "rate_hz": 1})
    with trio.fail_after(15):
        while len(gw.insight.history.topics()) < 2000:
            await trio.sleep(0.2)
    await trio.sleep(3.0)  # some history per topic
    request = b"GET /api/history?filter=%23&limit=100 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 5
    answered = [0]

    async def client() -> None:
        # answers counted as their status lines arrive (a round of five takes seconds
        # on a slow machine: counted by rounds, a 5 s window sometimes saw none)
        status = b"HTTP/1.1 200"
        sock = trio.socket.socket()
        with sock:
            await sock.connect(("127.0.0.1", gw.port))
            while True:
                await sock.send(request)
                seen, tail = 0, b""
                while seen < 5 or not tail.endswith(b"}"):
                    chunk = await sock.recv(1 << 20)
                    assert chunk
                    both = tail + chunk
                    found = both.count(status) - tail.count(status)
                    seen += found
                    answered[0] += found
                    tail = both[-len(status) :]

    with gw.looplag.window() as lag:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(client)
            await trio.sleep(5.0)
            nursery.cancel_scope.cancel()
    over = sum(n for b, n in zip([*BUCKETS, math.inf], lag.counts, strict=True) if b > 0.010)
    print(f"heavy API: {answered[0]} answers, {over} of {lag.count} lag samples over 10 ms")
    assert answered[0] >= 8
    assert over < 0.5 * lag.count, (over, lag.count)
    assert lag.max < LAG_BOUND_S, lag.max
