"""Whole masked text frames read without wsproto (gateway/serve/inbound.py): the same
messages, in the same order, as wsproto alone reads from the same bytes cut anywhere,
and every frame it does not take (control, binary, compressed, unmasked, fragmented,
oversized, invalid UTF-8, a partial one) reaches wsproto at a frame boundary, so its
answer (close code, pong) is the one it always gave."""

from __future__ import annotations

import itertools
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, Ping, TextMessage

from gateway.serve.inbound import text_frames

LIMIT = 4096


def frame(
    payload: bytes,
    opcode: int = 1,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    long16: bool = False,
    key: bytes | None = None,
) -> bytes:
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126 and not long16:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = bytes((first, mask_bit | 126)) + struct.pack(">H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = key if key is not None else os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def wsproto_alone(chunks: list[bytes]) -> list[object]:
    """What the session saw before the fast path: texts, pings, the first close."""
    ws = Connection(ConnectionType.SERVER)
    return _feed(ws, chunks, fast=False)


def with_fast_path(chunks: list[bytes]) -> list[object]:
    """ws.py's _receive: the fast path while it lasts, then wsproto for good."""
    ws = Connection(ConnectionType.SERVER)
    return _feed(ws, chunks, fast=True)


def _feed(ws: Connection, chunks: list[bytes], fast: bool) -> list[object]:
    seen: list[object] = []
    parts: list[str] = []

    def on_text(text: str) -> None:
        seen.append(("text", text))

    for data in chunks:
        if fast:
            data = text_frames(data, LIMIT, on_text, lambda: False)
            fast = not data
        if not data:
            continue
        ws.receive_data(data)
        for event in ws.events():
            seen.append(_event(event, parts))
            if isinstance(event, CloseConnection):
                return seen
    return seen


def _event(event: Event, parts: list[str]) -> object:
    if isinstance(event, TextMessage):
        parts.append(event.data)
        if not event.message_finished:
            return ("part",)
        text = "".join(parts)
        parts.clear()
        return ("text", text)
    if isinstance(event, Ping):
        return ("ping", bytes(event.payload))
    if isinstance(event, CloseConnection):
        return ("close", event.code)
    return (type(event).__name__,)


def texts(seen: list[object]) -> list[object]:
    return [e for e in seen if e != ("part",)]


def test_whole_text_frames_are_taken_and_the_rest_is_left_at_a_boundary() -> None:
    got: list[str] = []
    small, mid = frame(b'{"type":"ping"}'), frame(("\u00e9" * 200).encode(), long16=False)
    ping = frame(b"hb", opcode=9)
    rest = text_frames(small + mid + ping + small, LIMIT, got.append, lambda: False)
    assert got == ['{"type":"ping"}', "\u00e9" * 200]
    assert rest == ping + small  # wsproto reads on from the ping


def test_every_frame_it_does_not_take_goes_to_wsproto_whole() -> None:
    text = b'{"type":"subscribe"}'
    refused = {
        "binary": frame(text, opcode=2),
        "ping": frame(b"x", opcode=9),
        "close": frame(struct.pack(">H", 1000), opcode=8),
        "compressed (RSV1)": frame(text, rsv=4),
        "fragment": frame(text, fin=False),
        "continuation": frame(text, opcode=0),
        "unmasked": frame(text, masked=False),
        "16-bit length under 126": frame(text, long16=True),
        "64-bit length": frame(b"a" * 70000),
        "over the limit": frame(b"a" * (LIMIT + 1)),
        "invalid UTF-8": frame(b"\xff\xfe"),
        "a partial header": frame(b"a" * 300)[:3],
        "a partial payload": frame(text)[:-1],
    }
    for name, data in refused.items():
        got: list[str] = []
        assert text_frames(frame(b"ok") + data, LIMIT, got.append, lambda: False) == data, name
        assert got == ["ok"], name


def test_a_closing_connection_leaves_the_rest_to_wsproto() -> None:
    got: list[str] = []
    data = frame(b"a") + frame(b"b") + frame(b"c")
    rest = text_frames(data, LIMIT, got.append, lambda: len(got) >= 2)
    assert got == ["a", "b"] and rest == frame(b"c", key=rest[2:6])


def test_the_same_messages_and_answers_as_wsproto_on_a_hostile_sequence() -> None:
    data = (
        frame(b"one") + frame("two \u2603".encode()) + frame(b"x" * 300)
        + frame(b"hb", opcode=9) + frame(b"after the ping") + frame(b"\xc3\x28")
    )  # fmt: skip
    alone = wsproto_alone([data])
    assert texts(alone) == texts(with_fast_path([data]))
    assert alone[-1] == ("close", 1007)  # the invalid UTF-8: wsproto's answer, as before


_FRAMES = st.one_of(
    st.binary(max_size=300).map(lambda b: frame(b.hex().encode())),  # taken
    st.text(max_size=80).map(lambda t: frame(t.encode("utf-8", "surrogatepass"))),
    st.binary(max_size=20).map(lambda b: frame(b, opcode=9)),  # a ping
    st.binary(max_size=20).map(lambda b: frame(b, opcode=2)),  # binary: closed 1003
    st.binary(max_size=20).map(lambda b: frame(b)),  # maybe invalid UTF-8
    st.binary(max_size=20).map(lambda b: frame(b.hex().encode(), fin=False)),  # fragments
    st.binary(max_size=20).map(lambda b: frame(b.hex().encode(), opcode=0)),
    st.binary(max_size=20).map(lambda b: frame(b.hex().encode(), long16=True)),
    st.binary(max_size=20).map(lambda b: frame(b, masked=False)),
    st.binary(max_size=20).map(lambda b: frame(b.hex().encode(), rsv=4)),  # RSV1 unasked
    st.binary(max_size=8),  # noise
)


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(_FRAMES, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_cut_anywhere_the_messages_are_wsproto_s(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    alone, fast = wsproto_alone(chunks), with_fast_path(chunks)
    assert texts(fast) == texts(alone)
