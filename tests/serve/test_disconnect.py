"""One disconnect table: the docs, the JS client and the Python client follow it."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from gateway.client import GatewayClient, Refused
from gateway.core.disconnect import DISCONNECTS, METRIC_REASONS
from gateway.metrics import DISCONNECT_REASONS
from tests.nodejs import run_module_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: codes outside the table a client meets too: no close frame, an app's own code
OTHER_CODES = (1006, 1011, 4000, 4999)


def test_the_protocol_doc_lists_the_table_row_for_row() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## WebSocket close codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{4}) \| (.+?) \| (yes|no) \| (.+?) \|$", section, re.M)
    documented = {int(c): (meaning, again == "yes", action) for c, meaning, again, action in rows}
    expected = {code: (d.meaning, d.reconnect, d.action) for code, d in DISCONNECTS.items()}
    assert documented == expected


def test_every_metric_reason_comes_from_the_table() -> None:
    assert set(DISCONNECT_REASONS) == set(METRIC_REASONS)
    assert {d.metric for d in DISCONNECTS.values()} <= set(DISCONNECT_REASONS)


def test_the_js_client_reconnects_exactly_when_the_table_says() -> None:
    codes = [*DISCONNECTS, *OTHER_CODES]
    script = (
        f"import {{ shouldReconnect }} from {json.dumps(str(ROOT / 'dashboard/js/client.js'))};"
        f"console.log(JSON.stringify({json.dumps(codes)}.map(shouldReconnect)));"
    )
    decisions = dict(zip(codes, run_module_script(script), strict=True))
    expected = {c: DISCONNECTS[c].reconnect if c in DISCONNECTS else True for c in codes}
    assert decisions == expected


@pytest.mark.parametrize("code", [*DISCONNECTS, 4000])
async def test_the_python_client_reconnects_exactly_when_the_table_says(code: int) -> None:
    """A server that closes every connection with ``code`` right after its welcome:
    the client either connects again or stops with :class:`Refused`."""
    connections = 0
    again = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        nonlocal connections
        ws = await request.accept(subprotocol="telemetry.v1")
        connections += 1
        if connections > 1:
            again.set()
            return
        welcome = {
            "type": "welcome", "protocol": 1, "epoch": "e", "server_time": 0.0,
            "heartbeat_s": 15.0, "auth_required": False, "limits": {},
        }  # fmt: skip
        await ws.send_message(json.dumps(welcome))
        await ws.get_message()  # the client's subscribe
        await ws.aclose(code, "test")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = server.port
        client = GatewayClient(f"ws://127.0.0.1:{port}/ws", ["#"], backoff_base_s=0.01)
        refused: list[Refused] = []

        async def run_client() -> None:
            try:
                await client.run()
            except* Refused as group:
                leaves: list[BaseException] = [group]
                while leaves:
                    exc = leaves.pop()
                    if isinstance(exc, BaseExceptionGroup):
                        leaves.extend(exc.exceptions)
                    elif isinstance(exc, Refused):
                        refused.append(exc)
            again.set()  # it stopped by itself

        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(run_client)

                async def watch() -> None:
                    await again.wait()
                    inner.cancel_scope.cancel()

                inner.start_soon(watch)
        nursery.cancel_scope.cancel()
    reconnected = connections > 1
    assert reconnected == (DISCONNECTS[code].reconnect if code in DISCONNECTS else True)
    assert bool(refused) == (not reconnected)
    if refused:
        assert refused[0].code == code
