"""A stream's lifecycle (gateway/serve/lifecycle.py): the orderings it makes impossible."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from gateway.app import Gateway
from gateway.serve.lifecycle import CLOSING, DONE, DROPPED, OPEN, Lifecycle, LifecycleError

from .rawws import RawWs


def test_every_move_outside_the_table_raises() -> None:
    life = Lifecycle()
    life.to(OPEN)
    with pytest.raises(LifecycleError):
        life.to(OPEN)
    life.to(CLOSING, "shutdown")
    life.to(DROPPED, "client_gone")
    assert life.reason == "shutdown"  # the first reason stays
    with pytest.raises(LifecycleError):
        life.to(CLOSING)
    life.to(DONE)
    for state in (OPEN, CLOSING, DROPPED, DONE):
        with pytest.raises(LifecycleError):
            life.to(state)


async def test_a_websocket_closed_while_it_registers_gets_its_close_frame_and_no_welcome(
    gateway: Gateway,
) -> None:
    gateway.server.fanout.stopping = True  # shutdown has begun: new streams get 1012
    ws = await RawWs.connect(gateway.port)
    assert ws.status == 101
    frames = []
    with trio.fail_after(10):
        while True:
            opcode, payload = await ws.recv_frame()
            if opcode == -1:
                break
            frames.append((opcode, payload))
            if opcode == 8:
                await ws.send_raw(ws.frame(payload, opcode=8))  # answer the close
    ws.close()
    assert [op for op, _ in frames] == [8], frames  # no welcome before or after it
    assert RawWs.close_code(frames[0][1]) == 1012


async def test_an_event_stream_closed_while_it_registers_starts_with_its_http_head(
    gateway: Gateway,
) -> None:
    gateway.server.fanout.stopping = True
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.connect(("127.0.0.1", gateway.port))
    await sock.send(b"GET /sse?filter=%23 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    got = b""
    with trio.fail_after(10):
        while data := await sock.recv(65536):
            got += data
    sock.close()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got[:80]
    body = got.split(b"\r\n\r\n", 1)[1]
    assert b'"type":"close","code":1012' in body
    assert b'"welcome"' not in body


async def test_a_dropped_stream_does_not_wait_to_flush_to_its_dead_peer(
    autojump_clock: trio.testing.MockClock, gateway_factory: Callable[..., Any]
) -> None:
    """A screen that stopped reading with bytes still queued, then stops answering
    pings: it is dropped when its pong is late, not close_timeout_s later."""
    autojump_clock.autojump_threshold = 0.02  # bytes in flight on loopback arrive first
    gw: Gateway = await gateway_factory(
        server={
            # short virtual spans: the gateway's loop-lag sampler wakes every 10 ms,
            # and each autojump waits 20 ms of real idleness
            "heartbeat_s": 2.0,
            "pong_timeout_s": 1.0,
            "close_timeout_s": 30.0,
            "stall_s": 1000.0,
            "max_lag_s": 1000.0,
            "send_buffer_bytes": 4096,
        }
    )
    wall = gw.clock.wall()
    for n in range(400):
        gw.store.apply(f"plant/dev{n}", {"blob": "x" * 1000}, wall)
    ws = await RawWs.connect(gw.port, rcvbuf=4096)
    await ws.recv_json()  # welcome
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    start = trio.current_time()
    (session,) = gw.server.fanout.sessions
    with trio.fail_after(200):
        while session.out.idle:  # the snapshot is queued: the screen does not read
            await trio.sleep(0.1)
        while gw.server.connections:
            await trio.sleep(0.1)
    gone = trio.current_time() - start
    ws.close()
    assert gw.server.stats.disconnects["heartbeat"] == 1
    # the ping interval, the pong deadline and one sweep; not close_timeout_s more
    assert gone <= 2.0 + 1.0 + 0.5 + 0.5, gone
