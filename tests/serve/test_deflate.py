"""permessage-deflate: negotiation, frames compressed once for every screen, and inflation
bounded by the message limit."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import trio

from gateway.app import Gateway
from gateway.core.mirror import Mirror
from gateway.core.protocol import decode_server
from gateway.serve.deflate import deflate_frame, deflate_frame_steps, negotiate

from .rawws import RawWs

CHROME = "permessage-deflate; client_max_window_bits"


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        (CHROME, "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
        ("permessage-deflate", "permessage-deflate; server_no_context_takeover"),
        (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15; "
            "client_no_context_takeover",
        ),
        ("permessage-deflate; client_max_window_bits=9", None),  # taken below
        # a server window under 15 bits cannot share frames: that offer is declined,
        # the fallback after the comma accepted
        (
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            "permessage-deflate; server_no_context_takeover",
        ),
        ("permessage-deflate; server_max_window_bits=10", None),
        ("x-webkit-deflate-frame", None),
        ("permessage-deflate; unknown_param", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; client_max_window_bits=abc", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("", None),
    ],
)
def test_negotiation_answers_what_rfc_7692_allows(offer: str, answer: str | None) -> None:
    got = negotiate(offer.encode(), 65536)
    if offer.endswith("=9"):
        assert got is not None and got[0].endswith(b"client_max_window_bits=9")
        return
    assert (got[0].decode() if got else None) == answer
    assert negotiate(None, 65536) is None


def inflate(payload: bytes) -> bytes:
    # server_no_context_takeover: every message is a complete deflate stream of its own
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


async def read_json(ws: RawWs) -> dict:
    opcode, payload = await ws.recv_frame()
    assert opcode == 1, opcode
    return orjson.loads(inflate(payload) if ws.rsv1 else payload)


async def test_compressed_screens_rebuild_the_state_from_smaller_frames(gateway: Gateway) -> None:
    gw = gateway
    for i in range(300):
        gw.store.apply(f"site/a/d{i}", {"temperature": 20.0 + i, "mode": "run"}, gw.clock.wall())
    screens = [
        await RawWs.connect(gw.port, headers={"Sec-WebSocket-Extensions": CHROME}) for _ in range(2)
    ]
    assert "server_no_context_takeover" in screens[0].headers["sec-websocket-extensions"]
    mirrors = [Mirror(), Mirror()]
    wire = inflated = compressed_frames = 0
    for ws, mirror in zip(screens, mirrors, strict=True):
        mirror.set_epoch((await read_json(ws))["epoch"])
        await ws.send_json({"type": "subscribe", "id": "s", "filters": ["site/#"]})
    tick_frames: list[list[bytes]] = [[], []]
    for step in range(4):
        if step:
            for i in range(0, 300, 3):
                gw.store.apply(f"site/a/d{i}", {"temperature": step + i / 10}, gw.clock.wall())
        for k, (ws, mirror) in enumerate(zip(screens, mirrors, strict=True)):
            while True:
                with trio.move_on_after(0.3) as idle:
                    opcode, payload = await ws.recv_frame()
                if idle.cancelled_caught:
                    break
                assert opcode == 1
                data = inflate(payload) if ws.rsv1 else payload
                wire += len(payload)
                inflated += len(data)
                compressed_frames += ws.rsv1
                if step:
                    tick_frames[k].append(payload)
                for msg in decode_server(data):
                    if hasattr(msg, "seq"):
                        assert mirror.apply(msg) != "gap"  # type: ignore[arg-type]
    expected = {st.topic: (st.seq, st.fields) for st in gw.store.states() if st.seq}
    for mirror in mirrors:
        assert {t: (m.seq, m.fields) for t, m in mirror.topics.items()} == expected
    assert compressed_frames >= 4
    assert wire < 0.4 * inflated, (wire, inflated)
    # the two screens are in one group: the same compressed bytes, compressed once
    assert tick_frames[0] == tick_frames[1] and tick_frames[0]
    for ws in screens:
        ws.close()


async def test_a_client_may_compress_and_a_deflate_bomb_is_refused_at_the_limit(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_message_bytes": 4096})
    gw.store.apply("site/a", {"v": 1}, gw.clock.wall())
    ws = await RawWs.connect(gw.port, headers={"Sec-WebSocket-Extensions": CHROME})
    await read_json(ws)
    z = zlib.compressobj(6, zlib.DEFLATED, -10)  # the window we asked for, with takeover

    def deflated(text: bytes) -> bytes:
        return (z.compress(text) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]

    sub = orjson.dumps({"type": "subscribe", "id": "s", "filters": ["site/#"]})
    await ws.send_raw(ws.frame(deflated(sub), rsv=4))
    assert (await read_json(ws))["type"] == "ack"
    assert (await read_json(ws))["type"] == "snapshot"
    # 10 MB of spaces deflate to about 10 KB: inflating must stop at the 4 KiB limit
    bomb = deflated(b'{"type":"ping","pad":"' + b" " * 10_000_000 + b'"}')
    assert len(bomb) < 20_000
    tracemalloc.start()
    try:
        await ws.send_raw(ws.frame(bomb, rsv=4))
        with trio.fail_after(5):
            assert await ws.close_code_at_end() == 1009
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # never the 10 MB the bomb would inflate to
    other = await RawWs.connect(gw.port)  # the gateway serves on
    assert (await other.recv_json())["type"] == "welcome"
    other.close()
    ws.close()


async def test_compression_can_be_turned_off(gateway_factory: Callable[..., Any]) -> None:
    gw: Gateway = await gateway_factory(server={"compression": False})
    ws = await RawWs.connect(gw.port, headers={"Sec-WebSocket-Extensions": CHROME})
    assert ws.status == 101 and "sec-websocket-extensions" not in ws.headers
    ws.close()


def test_each_message_is_a_deflate_stream_of_its_own() -> None:
    """The shared compressor carries nothing from one message to the next (the
    server_no_context_takeover we negotiate): every frame inflates alone, to the same
    bytes a fresh compressor gives, also when it repeats the previous message (which
    a compressor keeping its window would send as a few bytes of back-reference) and
    after a call that failed."""

    def fresh(payload: bytes) -> bytes:
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        return (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def payload_of(frame: bytes) -> bytes:
        assert frame[0] == 0xC1  # FIN, RSV1 (compressed), text
        n, off = frame[1], 2
        if n == 126:
            n, off = int.from_bytes(frame[2:4], "big"), 4
        elif n == 127:
            n, off = int.from_bytes(frame[2:10], "big"), 10
        assert len(frame) == off + n
        return frame[off:]

    state = orjson.dumps(
        {"type": "batch", "items": [{"topic": f"a/{i}", "v": i} for i in range(99)]}
    )
    messages = [state, state, state[:300], b"x" * 70_000, state]
    for msg in messages:
        body = payload_of(deflate_frame(msg))
        assert body == fresh(msg)
        assert zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff") == msg
    with pytest.raises(TypeError):
        deflate_frame("not bytes" * 40)  # type: ignore[arg-type]
    # in steps (large join snapshots, compressed between checkpoints): the same bytes
    big = orjson.dumps([{"topic": f"a/{i}", "v": i * 0.37} for i in range(20_000)])
    for msg in (big, big[:65536], big[:65537], state):
        steps = list(deflate_frame_steps(msg, step=65536))
        assert steps[-1] == deflate_frame(msg)
        assert steps[:-1] == [None] * (-(-len(msg) // 65536) if len(msg) > 65536 else 0)
    assert payload_of(deflate_frame(state)) == fresh(state)


def watch_deflates(
    monkeypatch: pytest.MonkeyPatch, on_steps: Callable[[bytes], Iterator[None]] | None = None
) -> list[tuple[int, bool, int]]:
    """Every deflate of a frame from now on, as (size, inside a screen's pump, crc32);
    ``on_steps`` may add steps before a stepped deflate's own (a slower deflate)."""
    from gateway.serve import fanout
    from gateway.serve.ws import WsSession

    in_pump = [False]
    calls: list[tuple[int, bool, int]] = []
    pump, deflate, steps = WsSession.pump, fanout.deflate_frame, fanout.deflate_frame_steps

    def watched_pump(self: WsSession, now: float | None = None) -> None:
        in_pump[0] = True
        try:
            pump(self, now)
        finally:
            in_pump[0] = False

    def watched_deflate(payload: bytes) -> bytes:
        calls.append((len(payload), in_pump[0], zlib.crc32(payload)))
        return deflate(payload)

    def watched_steps(payload: bytes) -> Iterator[bytes | None]:
        calls.append((len(payload), in_pump[0], zlib.crc32(payload)))
        if on_steps is not None:
            yield from on_steps(payload)
        yield from steps(payload)

    monkeypatch.setattr(WsSession, "pump", watched_pump)
    monkeypatch.setattr(fanout, "deflate_frame", watched_deflate)
    monkeypatch.setattr(fanout, "deflate_frame_steps", watched_steps)
    return calls


async def read_state(ws: RawWs, gw: Gateway, topics: int) -> Mirror:
    """A screen's mirror once it holds ``topics`` topics (within 20 s), checked on one
    of them (the tests' state: ``t`` is 20 + i for device i)."""
    mirror = Mirror()
    mirror.set_epoch(gw.store.epoch)
    with trio.fail_after(20):
        while len(mirror.topics) < topics:
            opcode, payload = await ws.recv_frame()
            assert opcode == 1
            for msg in decode_server(inflate(payload) if ws.rsv1 else payload):
                if hasattr(msg, "seq"):
                    mirror.apply(msg)  # type: ignore[arg-type]
    assert mirror.topics["s/3/d10"].fields == {"t": 30.0, "mode": "run"}
    return mirror


def assert_deflated_once_outside_pumps(calls: list[tuple[int, bool, int]], over: int) -> None:
    """Every frame larger than ``over`` was deflated, once, and never in a pump."""
    large = [(inside, crc) for size, inside, crc in calls if size > over]
    assert large and not any(inside for inside, _ in large)  # never inside a pump
    assert len({crc for _, crc in large}) == len(large)  # each frame compressed once


async def test_a_large_join_snapshot_is_compressed_between_slices_not_in_a_pump(
    gateway_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join snapshot built over several slices (more topics than a slice) is
    compressed by the tick loop a frame per checkpoint, before the screens are pumped:
    no screen's pump compresses a large frame (at 50,000 topics that was 8.6 MB in one
    go), every frame is compressed once, and every screen rebuilds the whole state."""
    gw: Gateway = await gateway_factory(server={"max_frame_bytes": 32 * 1024})
    for i in range(3000):  # three slices of the hub's 1,000
        gw.store.apply(f"s/{i % 7}/d{i}", {"t": 20.0 + i, "mode": "run"}, gw.clock.wall())
    calls = watch_deflates(monkeypatch)
    screens = [
        await RawWs.connect(gw.port, headers={"Sec-WebSocket-Extensions": CHROME}) for _ in range(3)
    ]
    for ws in screens:
        await read_json(ws)  # welcome
        await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    mirrors = [await read_state(ws, gw, 3000) for ws in screens]
    assert_deflated_once_outside_pumps(calls, 16 * 1024)
    # the ticks' own frames too: compressed by the tick loop, once, before the pumps
    calls.clear()
    for i in range(3000):
        gw.store.apply(f"s/{i % 7}/d{i}", {"t": -1.0 - i, "mode": "stop"}, gw.clock.wall())
    with trio.fail_after(20):
        for ws, mirror in zip(screens, mirrors, strict=True):
            while any(t.fields["mode"] != "stop" for t in mirror.topics.values()):
                opcode, payload = await ws.recv_frame()
                if opcode != 1:
                    continue  # a heartbeat ping
                for msg in decode_server(inflate(payload) if ws.rsv1 else payload):
                    if hasattr(msg, "seq"):
                        mirror.apply(msg)  # type: ignore[arg-type]
    assert_deflated_once_outside_pumps(calls, 1024)
    for ws in screens:
        ws.close()


async def test_screens_joining_while_the_tick_compresses_wait_for_it_not_deflate_again(
    gateway_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join wave: screens whose subscribe arrives while the tick loop is compressing
    the join snapshot it has just built (between checkpoints) are handed that
    snapshot too. Pumped at once, each would deflate it again in its own step (in a
    probe's wave: 1 MB snapshots, 5 ms each); the tick loop pumps them once it is
    compressed, so every large frame is deflated once, outside every pump."""
    gw: Gateway = await gateway_factory()
    for i in range(3000):
        gw.store.apply(f"s/{i % 7}/d{i}", {"t": 20.0 + i, "mode": "run"}, gw.clock.wall())
    compressing = trio.Event()

    def slower(payload: bytes) -> Iterator[None]:
        if len(payload) > 16 * 1024:
            compressing.set()
            # a slower deflate: the checkpoints of a large one, in which the other
            # screens' subscribes are read and handled
            yield from [None] * 200

    calls = watch_deflates(monkeypatch, slower)
    screens = [
        await RawWs.connect(gw.port, headers={"Sec-WebSocket-Extensions": CHROME}) for _ in range(6)
    ]
    for ws in screens:
        await read_json(ws)  # welcome
    first, *late = screens
    await first.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    with trio.fail_after(10):
        await compressing.wait()
    for ws in late:  # while the tick loop compresses the snapshot they will share
        await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    for ws in screens:
        await read_state(ws, gw, 3000)
    assert_deflated_once_outside_pumps(calls, 16 * 1024)
    assert gw.hub.stats.joins_shared >= len(screens)  # one snapshot for the wave
    for ws in screens:
        ws.close()
