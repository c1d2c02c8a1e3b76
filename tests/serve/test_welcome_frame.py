"""The welcome built from cached pieces (gateway/serve/welcome.py) is the same message
as encoding and deflating it whole: the same JSON, a deflate stream any inflater
reads, and a size within a few dozen bytes of a whole-message deflate."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage
from wsproto.extensions import PerMessageDeflate

from gateway.core.protocol import Welcome, encode
from gateway.serve.deflate import deflate_frame
from gateway.serve.sockio import text_frame_header
from gateway.serve.welcome import WelcomeFrames

LIMITS = {"max_message_bytes": 65536, "rate_steps_hz": [20, 10, 5, 2, 1, 0.5], "x" * 40: "y" * 200}


def welcome(time: float, epoch: str = "e1", auth: bool = False, version: str = "v1") -> Welcome:
    return Welcome(epoch, time, 15.0, auth, LIMITS, meta={"url": "/api/meta", "version": version})


def payload(frame: bytes) -> tuple[bool, bytes]:
    """(RSV1 set, payload) of an unmasked server frame."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return bool(frame[0] & 0x40), frame[start:]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_the_frame_is_the_welcome_whole_at_any_time(time: float) -> None:
    frames = WelcomeFrames()
    frames.frame(welcome(1.0), True)  # the pieces are cached from another time
    msg = welcome(time)
    compressed, data = payload(frames.frame(msg, True))
    assert compressed and inflate(data) == encode(msg)
    plain = frames.frame(msg, False)
    assert plain == text_frame_header(len(encode(msg))) + encode(msg)
    # the price of the cached pieces: the parts cannot refer to each other, and the
    # time goes uncompressed (about 35 bytes for the gateway's welcome of ~530)
    assert len(frames.frame(msg, True)) <= len(deflate_frame(encode(msg))) + 48


def test_every_field_but_the_time_is_a_new_entry() -> None:
    frames = WelcomeFrames()
    for msg in (welcome(5.5), welcome(5.5, epoch="e2"), welcome(5.5, auth=True),
                welcome(5.5, version="v2")):  # fmt: skip
        assert inflate(payload(frames.frame(msg, True))[1]) == encode(msg)


def test_a_permessage_deflate_client_reads_it() -> None:
    """wsproto as the client, with the extension as the gateway negotiates it."""
    ext = PerMessageDeflate()
    ext.finalize("permessage-deflate; server_no_context_takeover")
    client = Connection(ConnectionType.CLIENT, extensions=[ext])
    msg = welcome(1764400000.123456)
    frames = WelcomeFrames()
    client.receive_data(frames.frame(msg, True) + frames.frame(welcome(2.0), True))
    texts = [e.data for e in client.events() if isinstance(e, TextMessage)]
    assert texts == [encode(msg).decode(), encode(welcome(2.0)).decode()]
