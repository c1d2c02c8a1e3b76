"""WebSocket garbage, one connection per case: each is closed with the right code within a
second (the cut frame by the message deadline), the gateway keeps serving, and no task
is left behind."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from gateway.app import Gateway
from tests.serve.rawws import RawWs

PING = b'{"type":"ping"}'

CASES = {
    "unmasked client frame": (RawWs.frame(PING, mask=False), 1002),
    "reserved bits set": (RawWs.frame(PING, rsv=2), 1002),
    "unknown opcode": (RawWs.frame(b"x", opcode=3), 1002),
    "fragmented control frame": (RawWs.frame(b"x", opcode=9, fin=False), 1002),
    "oversized control frame": (RawWs.frame(b"x" * 200, opcode=9), 1002),
    "invalid UTF-8 in a text frame": (RawWs.frame(b'{"type":"\xff\xfe"}'), 1007),
    # 2^63 sets the bit RFC 6455 reserves: a protocol error
    "length 2^63": (bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + b"abcd", 1002),
    # a legal length far over the limit: refused from the header, no payload awaited
    "length 2^63 - 1": (bytes([0x81, 0xFF]) + struct.pack("!Q", (1 << 63) - 1) + b"ab", 1009),
    "a frame cut in half, then silence": (
        RawWs.frame(b'{"type":"ping","pad":"' + b"x" * 100 + b'"}')[:60],
        1008,
    ),
}


def live_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


@pytest.mark.parametrize("case", list(CASES))
async def test_garbage_is_closed_with_the_right_code_and_the_gateway_serves_on(
    case: str, gateway_factory: Callable[..., Any]
) -> None:
    gw: Gateway = await gateway_factory(server={"message_timeout_s": 0.3})
    gw.store.apply("site/a", {"v": 1}, gw.clock.wall())
    await trio.testing.wait_all_tasks_blocked()  # the gateway settled: its tasks counted
    baseline = live_tasks()
    data, code = CASES[case]
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    await ws.send_raw(data)
    with trio.fail_after(1.0):  # the cut frame: message_timeout_s + one sweep
        assert await ws.close_code_at_end() == code
    ws.close()
    ok = await RawWs.connect(gw.port)
    assert (await ok.recv_json())["type"] == "welcome"
    await ok.send_json({"type": "subscribe", "id": "s", "filters": ["site/#"]})
    assert (await ok.recv_json())["type"] == "ack"
    assert (await ok.recv_json())["type"] == "snapshot"
    ok.close()
    with trio.fail_after(3):
        while live_tasks() > baseline:
            await trio.sleep(0.05)
    assert gw.server.stats.internal_errors == 0
