"""The upgrade's fast path (gateway/serve/upgrade.py) takes only what h11 takes, the
same way; everything else (oversized, malformed, other requests) goes to h11 whole.

The property tests compare it with h11 on generated heads: whenever the fast path
returns a request, h11 parses the same bytes to the same method, target, headers and
trailing bytes; whenever h11 refuses, the fast path does not take the request."""

from __future__ import annotations

import base64
import os

import h11
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.serve.http import MAX_HEADER_BYTES, Request, new_connection
from gateway.serve.upgrade import MORE, Head, response_101, scan

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GOOD = (
    b"GET /ws?access_token=abc HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def h11_reads(data: bytes) -> tuple[Request, bytes] | None:
    """What h11 makes of ``data`` as the server did before the fast path: the request
    (as http.read_request builds it) and the bytes after it, or None (refused or
    incomplete)."""
    conn = new_connection()
    conn.receive_data(data)
    try:
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            return None
        while conn.next_event() not in (h11.PAUSED, h11.NEED_DATA):
            pass
    except h11.RemoteProtocolError:
        return None
    req = Request(
        event.method.decode(),
        event.target,
        event.target.partition(b"?")[0].decode(),
        {},
        [(k.lower(), v) for k, v in event.headers],
        event.http_version,
    )
    return req, bytes(conn.trailing_data[0])


def test_a_plain_upgrade_is_taken_with_its_query_and_the_bytes_behind_it() -> None:
    head = scan(GOOD + b"\x81\x80rest")
    assert isinstance(head, Head)
    req = head.request
    assert (req.method, req.path, req.http_version) == ("GET", "/ws", b"1.1")
    assert req.query == {"access_token": "abc"}
    assert req.header(b"sec-websocket-key") == KEY
    assert req.header(b"upgrade") == b"websocket" and req.wants_websocket
    assert head.raw == GOOD and head.trailing == b"\x81\x80rest"


def test_an_incomplete_head_asks_for_more_until_the_limit() -> None:
    for cut in (1, 5, 8, len(GOOD) // 2, len(GOOD) - 1):
        assert scan(GOOD[:cut]) is MORE, cut
    # searching on from where the last call stopped finds an end split across reads
    assert isinstance(scan(GOOD, searched=len(GOOD) - 2), Head)
    long = GOOD[:-2] + b"X-Pad: " + b"a" * MAX_HEADER_BYTES
    assert scan(long) is None  # over the limit with no end: h11's (431)
    assert scan(GOOD[:-2] + b"X-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n") is None


@pytest.mark.parametrize(
    "data",
    [
        b"POST /ws HTTP/1.1\r\n",
        b"GET /wsx HTTP/1.1\r\n",
        b"GET /ws/ HTTP/1.1\r\n",
        b"get /ws HTTP/1.1\r\n",
        b"HEAD /ws",
        b"GET /healthz HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01",  # a TLS hello
        b" GET /ws",
    ],
)
def test_anything_but_get_ws_goes_to_h11_from_its_first_bytes(data: bytes) -> None:
    assert scan(data) is None


@pytest.mark.parametrize(
    "replace",
    [
        (b"HTTP/1.1\r\nHost", b"HTTP/1.0\r\nHost"),  # another version
        (b"Host: 127.0.0.1:8080\r\n", b""),  # no Host
        (b"Host: 127.0.0.1:8080\r\n", b"Host: a\r\nHost: b\r\n"),  # two
        (b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\n continued\r\n"),  # obs-fold
        (b"Upgrade: websocket\r\n", b"Upgrade: websocket\n"),  # a bare LF
        (b"Upgrade: websocket\r\n", b"Upgrade : websocket\r\n"),  # space before ':'
        (b"Upgrade: websocket\r\n", b"Upgrade: web\x00socket\r\n"),  # a control byte
        (b"Upgrade: websocket\r\n", b"Upgrade: websocket\xff\r\n"),  # obs-text
        (b"Upgrade: websocket\r\n", b"Content-Length: 0\r\n"),  # a body header
        (b"Upgrade: websocket\r\n", b"Transfer-Encoding: chunked\r\n"),
        (b"Upgrade: websocket\r\n", b"Up(grade: websocket\r\n"),  # not a token
        (b"/ws?access_token=abc", b"/ws?a b"),  # a space in the target
        (b"/ws?access_token=abc", b"/ws?" + b"&".join([b"a=1"] * 60)),  # too many fields
    ],
)
def test_a_head_h11_reads_differently_or_refuses_goes_to_h11(replace: tuple[bytes, bytes]) -> None:
    data = GOOD.replace(*replace)
    assert data != GOOD
    assert scan(data) is None


def test_the_101_is_byte_for_byte_what_h11_wrote() -> None:
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        (b"server", b"trio-telemetry-gateway"),
        (b"sec-websocket-extensions", b"permessage-deflate; server_no_context_takeover"),
    ]
    conn = new_connection()
    conn.receive_data(GOOD)
    conn.next_event()
    expected = conn.send(h11.InformationalResponse(status_code=101, headers=headers))
    assert response_101(headers) == expected


# -- generated heads against h11 -------------------------------------------------------------

# names and values mix what is allowed with what is not (control bytes, separators,
# obs-text, CR and LF): most generated heads are malformed somewhere
_NAME = st.one_of(
    st.sampled_from([b"Host", b"Upgrade", b"Connection", b"Content-Length", b"X-A", b"host"]),
    st.binary(min_size=0, max_size=6),
)
_VALUE = st.one_of(
    st.sampled_from([b"websocket", b"Upgrade", b"0", b"a, b", b" padded ", b"\tx"]),
    st.binary(min_size=0, max_size=12),
)
_SEP = st.sampled_from([b": ", b":", b" : ", b":\t", b"::"])
_EOL = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n"])
_LINE = st.tuples(_NAME, _SEP, _VALUE, _EOL).map(b"".join)
_FIRST = st.sampled_from(
    [b"GET /ws HTTP/1.1", b"GET /ws?x=1&y HTTP/1.1", b"GET /ws? HTTP/1.1", b"GET /ws HTTP/1.0",
     b"GET /ws?%zz\x7f HTTP/1.1", b"GET /ws  HTTP/1.1", b"GET /ws HTTP/1.1 "]
)  # fmt: skip


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    first=_FIRST,
    lines=st.lists(_LINE, max_size=8),
    host=st.booleans(),
    trailing=st.binary(max_size=8),
)
@example(first=b"GET /ws HTTP/1.1", lines=[], host=True, trailing=b"")
def test_what_the_fast_path_takes_h11_reads_the_same(
    first: bytes, lines: list[bytes], host: bool, trailing: bytes
) -> None:
    data = first + b"\r\n" + (b"Host: x\r\n" if host else b"") + b"".join(lines) + b"\r\n"
    data += trailing
    got = scan(data)
    reference = h11_reads(data)
    if isinstance(got, Head):
        assert reference is not None, data
        req, after = reference
        assert got.request.method == req.method
        assert got.request.target == req.target and got.request.path == req.path
        assert got.request.headers == req.headers
        assert got.request.http_version == req.http_version
        assert got.trailing == after
        assert got.raw + got.trailing == data
        # a head it takes, read in pieces, is waited for: never handed to h11 early
        for cut in range(len(got.raw)):
            assert scan(data[:cut]) is MORE, cut


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_never_taken_unless_h11_takes_them(data: bytes) -> None:
    for candidate in (data, b"GET /ws" + data, b"GET /ws HTTP/1.1\r\nHost: x\r\n" + data):
        if isinstance(scan(candidate), Head):
            assert h11_reads(candidate) is not None, candidate


# -- on a real socket --------------------------------------------------------------------


async def test_an_upgrade_sent_byte_by_byte_opens_and_its_first_frame_is_read(
    gateway: Gateway,
) -> None:
    key = base64.b64encode(os.urandom(16))
    request = GOOD.replace(KEY, key).replace(b"?access_token=abc", b"")
    ping = b"\x89\x80\x00\x00\x00\x00"  # a masked, empty ping right behind the request
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", gateway.port))
    with trio.fail_after(10):
        for i in range(len(request)):
            await sock.send(request[i : i + 1])
        await sock.send(ping)
        reply = b""
        while b"\x8a\x00" not in reply.partition(b"\r\n\r\n")[2]:
            reply += await sock.recv(65536)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 101 \r\n")
    assert gateway.server.stats.handshake_rejected.total() == 0
    assert gateway.server.stats.internal_errors == 0


async def test_a_refused_fast_upgrade_is_answered_as_h11_answered_it(gateway: Gateway) -> None:
    """The fast path's refusals (Origin, version, key) go out through h11, counted once."""
    cases = [
        (GOOD.replace(b"Host:", b"Origin: https://evil.example\r\nHost:"), 403, "origin"),
        (GOOD.replace(b"Version: 13", b"Version: 8"), 426, "bad_upgrade"),
        (GOOD.replace(KEY, b"short"), 400, "bad_upgrade"),
        (GOOD.replace(b"Upgrade: websocket", b"Upgrade: h2c"), 426, "not_websocket"),
    ]
    for request, status, reason in cases:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", gateway.port))
        await sock.send(request)
        reply = b""
        with trio.fail_after(5):
            while chunk := await sock.recv(65536):
                reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.1 %d " % status), (reason, reply[:60])
        assert b"connection: close" in reply.lower()
    rejected = gateway.server.stats.handshake_rejected
    assert (rejected["origin"], rejected["bad_upgrade"], rejected["not_websocket"]) == (1, 2, 1)
    assert gateway.server.stats.internal_errors == 0
