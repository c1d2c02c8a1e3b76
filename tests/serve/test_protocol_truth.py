"""docs/protocol.md read as a client author reads it: what it says is what the wire does."""

from __future__ import annotations

import json
import pathlib
import zlib
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from gateway.app import Gateway
from gateway.core.mirror import Mirror, MirrorTopic
from gateway.core.protocol import decode_server
from gateway.core.state import Snapshot
from tests.nodejs import run_module_script

from .httpget import http_get
from .rawws import RawWs

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def _subscribed(gw: Gateway, topic: str = "plant/a") -> tuple[RawWs, dict[str, Any]]:
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()  # welcome
    await ws.send_json({"type": "subscribe", "id": "s", "filters": [topic]})
    assert (await ws.recv_json())["op"] == "subscribe"
    snap = await ws.recv_json()
    assert snap["type"] == "snapshot"
    return ws, snap


async def test_a_resume_at_seq_0_gets_a_snapshot_so_rule_4_cannot_loop(gateway: Gateway) -> None:
    """Rule 4 read literally: a delta for a topic you do not hold is a gap, resume it
    at seq 0. The answer must be something a client holding nothing can apply."""
    gw = gateway
    gw.store.apply("plant/a", {"v": 1, "w": 2}, gw.clock.wall())
    gw.store.apply("plant/a", {"v": 3}, gw.clock.wall())
    ws, _ = await _subscribed(gw)
    await ws.send_json({"type": "resume", "epoch": gw.store.epoch, "topics": {"plant/a": 0}})
    with trio.fail_after(5):
        assert (await ws.recv_json())["op"] == "resume"
        answer = await ws.recv_json()
    ws.close()
    assert answer["type"] == "snapshot" and answer["resync"] is True, answer
    mirror = Mirror()
    (msg,) = decode_server(json.dumps(answer))
    assert mirror.apply(msg) == "applied"  # type: ignore[arg-type]
    assert mirror.topics["plant/a"].fields == {"v": 3, "w": 2}


async def test_a_client_ahead_of_the_gateway_is_brought_back(gateway: Gateway) -> None:
    gw = gateway
    gw.store.apply("plant/a", {"v": 1}, gw.clock.wall())
    ws, snap = await _subscribed(gw)
    mirror = Mirror()
    (first,) = decode_server(json.dumps(snap))
    mirror.apply(first)  # type: ignore[arg-type]
    mirror.topics["plant/a"].seq += 100  # the client's own bug: it believes it is ahead
    mirror.topics["plant/a"].fields["v"] = "wrong"
    await ws.send_json(
        {"type": "resume", "epoch": gw.store.epoch, "topics": {"plant/a": snap["seq"] + 100}}
    )
    with trio.fail_after(5):
        assert (await ws.recv_json())["op"] == "resume"
        answer = await ws.recv_json()
    ws.close()
    (msg,) = decode_server(json.dumps(answer))
    assert isinstance(msg, Snapshot) and msg.seq == snap["seq"]
    assert mirror.apply(msg) == "applied"
    assert mirror.topics["plant/a"].seq == snap["seq"]
    assert mirror.topics["plant/a"].fields == {"v": 1}


async def test_a_resume_before_subscribe_ahead_of_the_gateway_gets_a_resync_snapshot(
    gateway: Gateway,
) -> None:
    """The same client bug on a reconnect: its ``resume`` (before ``subscribe``) names
    a seq ahead of the gateway's. A plain snapshot at the gateway's seq is below what
    the client holds, so rule 1 would ignore it for good: it must say ``resync``.
    (Found by a client written from docs/protocol.md alone.)"""
    gw = gateway
    gw.store.apply("plant/a", {"v": 1}, gw.clock.wall())
    gw.store.apply("plant/b", {"v": 2}, gw.clock.wall())
    seq_a = gw.store.get("plant/a").seq  # type: ignore[union-attr]
    seq_b = gw.store.get("plant/b").seq  # type: ignore[union-attr]
    mirror = Mirror()
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()  # welcome
    await ws.send_json(
        {
            "type": "resume",
            "epoch": gw.store.epoch,
            "topics": {"plant/a": seq_a + 50, "plant/b": seq_b},
        }
    )
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["plant/#"]})
    with trio.fail_after(5):
        assert (await ws.recv_json())["resumed"] is True
        assert (await ws.recv_json())["op"] == "subscribe"
        answer = await ws.recv_json()
    ws.close()
    items = answer["items"] if answer["type"] == "batch" else [answer]
    assert [(i["type"], i["topic"], i.get("resync")) for i in items] == [
        ("snapshot", "plant/a", True)  # plant/b is current: nothing
    ]
    mirror.topics["plant/a"] = MirrorTopic(seq_a + 50, {"v": "wrong"})  # its copy, ahead
    (msg,) = decode_server(json.dumps(items[0]))
    assert mirror.apply(msg) == "applied"  # type: ignore[arg-type]
    assert mirror.topics["plant/a"].seq == seq_a and mirror.topics["plant/a"].fields == {"v": 1}


def test_the_js_client_applies_a_resync_snapshot_whatever_it_holds() -> None:
    script = f"""
      import {{ GatewayClient }} from {json.dumps(str(ROOT / "dashboard/js/client.js"))};
      const c = new GatewayClient({{ url: "ws://127.0.0.1/ws", WebSocketImpl: null }});
      const snap = (seq, v, extra) => ({{ type: "snapshot", topic: "t", seq, fields: {{ v }},
        online: null, stale: false, ts: null, rx: 1, ...extra }});
      const out = [c.apply(snap(50, "ahead")), c.apply(snap(7, "old")),
                   c.apply(snap(7, "right", {{ resync: true }}))];
      console.log(JSON.stringify({{ out, held: c.topics.get("t") }}));
    """
    got = run_module_script(script)
    assert got["out"] == ["applied", "skipped", "applied"]
    assert got["held"]["seq"] == 7 and got["held"]["fields"] == {"v": "right"}


async def test_over_the_message_rate_a_client_is_warned_first(
    autojump_clock: trio.testing.MockClock, gateway_factory: Callable[..., Any]
) -> None:
    autojump_clock.autojump_threshold = 0.02
    gw: Gateway = await gateway_factory(server={"messages_per_s": 5, "message_burst": 10})
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    ping = ws.frame(b'{"type":"ping"}')
    await ws.send_raw(ping * 11)
    with trio.fail_after(5):
        replies = [(await ws.recv_json())["type"] for _ in range(11)]
        assert replies == ["pong"] * 10 + ["error"]
        await trio.sleep(10 / 5)  # it slows down: the bucket fills again
        await ws.send_raw(ping * 11)
        replies = [await ws.recv_json() for _ in range(11)]
        assert [r["type"] for r in replies] == ["pong"] * 10 + ["error"]
        assert replies[-1]["code"] == "rate_limited"
        await ws.send_raw(ping)  # and it goes on: closed
        assert await ws.close_code_at_end() == 4029
    ws.close()


async def test_control_messages_of_256_bytes_or_more_are_compressed(gateway: Gateway) -> None:
    ws = await RawWs.connect(
        gateway.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"}
    )
    opcode, payload = await ws.recv_frame()
    ws.close()
    assert opcode == 1 and ws.rsv1, "welcome went out uncompressed"
    welcome = json.loads(zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff"))
    assert welcome["type"] == "welcome"
    assert welcome["protocol"] == 1 and welcome["protocol_minor"] == 3


async def test_auth_where_no_token_is_needed_is_acknowledged_not_an_error(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_protocol_errors": 2})
    ws = await RawWs.connect(gw.port)
    welcome = await ws.recv_json()
    assert welcome["auth_required"] is False
    for _ in range(5):
        await ws.send_json({"type": "auth", "token": "anything"})
        with trio.fail_after(5):
            assert await ws.recv_json() == {"type": "ack", "op": "auth"}
    ws.close()


async def test_a_message_too_big_says_which_limit_without_compression(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_message_bytes": 1000})
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    await ws.send_raw(ws.frame(b"x" * 2000))
    with trio.fail_after(5):
        while True:
            opcode, payload = await ws.recv_frame()
            if opcode in (8, -1):
                break
    ws.close()
    assert RawWs.close_code(payload) == 1009
    assert payload[2:].decode() == "messages are limited to 1000 bytes"


def test_the_message_budget_warns_once_then_closes_unless_the_client_slows_down() -> None:
    from gateway.serve.ratelimit import MessageBudget

    budget = MessageBudget(rate=5.0, burst=10, now=0.0)
    assert [budget.take(0.0) for _ in range(11)] == ["ok"] * 10 + ["warn"]
    assert budget.take(0.1) == "close"  # half a token later: still over, and warned
    budget = MessageBudget(rate=5.0, burst=10, now=0.0)
    [budget.take(0.0) for _ in range(11)]
    assert budget.take(2.0) == "ok"  # two seconds: the bucket is full, the warning forgotten
    assert [budget.take(2.0) for _ in range(10)] == ["ok"] * 9 + ["warn"]


async def test_the_documented_welcome_has_the_real_fields_and_types(gateway: Gateway) -> None:
    """A client author copies the doc's example: every field, with the same JSON type
    (``50.0`` is a float to a typed client, ``50`` an integer)."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("### `welcome`", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    ws = await RawWs.connect(gateway.port)
    real = await ws.recv_json()
    ws.close()

    def shape(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: shape(v) for k, v in obj.items()}
        return type(obj).__name__

    assert shape(example) == shape(real)


async def test_the_event_stream_takes_the_documented_16_filters(gateway: Gateway) -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert "1 to 16 `filter`" in text
    many = "&".join(f"filter=a/{n}" for n in range(17))
    status, _, body = await http_get(gateway.port, f"/sse?{many}")
    assert status == 400 and b"1 to 16" in body


async def test_ping_ids_are_javascript_safe_integers(gateway: Gateway) -> None:
    """The error says "safe integer": 2**53 is not one (a JavaScript client would
    read the echoed id as 2**53 + 1 too)."""
    ws = await RawWs.connect(gateway.port)
    await ws.recv_json()
    answers = []
    for n in (2**53 - 1, -(2**53 - 1), 2**53, -(2**53)):
        await ws.send_json({"type": "ping", "id": n})
        with trio.fail_after(5):
            answers.append(await ws.recv_json())
    ws.close()
    assert [a["type"] for a in answers] == ["pong", "pong", "error", "error"]
    assert answers[0]["id"] == 2**53 - 1 and answers[2]["code"] == "bad_message"


async def test_an_event_stream_is_a_get(gateway: Gateway) -> None:
    """A POST to /sse was served as a stream, its body never read."""
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = await http_get(
            gateway.port, "/sse?filter=%23", {"Content-Length": "0"}, method=method
        )
        assert status == 405, method
    assert gateway.server.stats.http_requests["method_not_allowed"] == 3
    status, headers, _ = await http_get(gateway.port, "/sse?filter=%23", method="HEAD")
    assert status == 405 and headers["connection"] == "close"
