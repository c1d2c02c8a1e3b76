"""The sans-io MQTT splitter: any stream of packets, cut at any byte boundaries, comes
out as the same packets; oversize publishes are skipped without being buffered; broken
framing raises MalformedPacket."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.mqttwire import (
    MAX_OTHER,
    MAX_PROPERTIES,
    MalformedPacket,
    Packet,
    Retained,
    Splitter,
    TooLarge,
)

MAX_PAYLOAD = 200


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def publish(
    topic: bytes,
    payload: bytes,
    qos: int = 0,
    pid: int = 1,
    props: bytes | None = None,
    retain: bool = False,
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += pid.to_bytes(2, "big")
    if props is not None:  # MQTT 5
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1 | retain]) + varint(len(body)) + body


def drain(splitter: Splitter) -> list[object]:
    out: list[object] = []
    while (item := splitter.next()) is not None:
        out.append(item)
    return out


def feed_in_chunks(data: bytes, cuts: list[int], splitter: Splitter) -> list[object]:
    out: list[object] = []
    at = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        splitter.feed(data[at:cut])
        at = cut
        out += drain(splitter)
    return out


topics = st.binary(min_size=0, max_size=40)
payloads = st.binary(min_size=0, max_size=MAX_PAYLOAD)
OTHER = [b"\xd0\x00", b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x00", b"\x40\x02\x00\x07"]


@st.composite
def streams(draw: st.DrawFn, v5: bool) -> tuple[bytes, list[object]]:
    """A stream of packets and what the splitter must make of it."""
    data = b""
    expected: list[object] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["qos0", "retained", "qos1", "other", "too_large"]))
        props = draw(st.binary(max_size=30)) if v5 else None
        topic = draw(topics)
        if kind == "other":
            raw = draw(st.sampled_from(OTHER))
            expected.append(Packet(raw))
        elif kind == "qos0":
            payload = draw(payloads)
            raw = publish(topic, payload, props=props)
            expected.append((topic, payload))
        elif kind == "retained":  # the broker's stored message, sent at subscribe
            payload = draw(payloads)
            raw = publish(topic, payload, props=props, retain=True)
            expected.append(Retained(topic, payload))
        elif kind == "qos1":
            raw = publish(
                topic, draw(payloads), qos=1, pid=draw(st.integers(1, 65535)), props=props
            )
            expected.append(Packet(raw))
        else:
            qos = draw(st.integers(0, 2))
            pid = draw(st.integers(1, 65535)) if qos else 0
            size = draw(st.integers(MAX_PAYLOAD + 1, 3000))
            raw = publish(topic, b"x" * size, qos=qos, pid=pid, props=props)
            expected.append(TooLarge(qos, pid, topic, size))
        data += raw
    return data, expected


@settings(max_examples=300, deadline=None)
@given(st.data(), st.booleans(), st.lists(st.integers(0, 100_000), max_size=30))
def test_any_stream_cut_anywhere_comes_out_packet_by_packet(
    data: st.DataObject, v5: bool, cuts: list[int]
) -> None:
    stream, expected = data.draw(streams(v5))
    splitter = Splitter(v5=v5, max_payload=MAX_PAYLOAD)
    assert feed_in_chunks(stream, cuts, splitter) == expected
    assert splitter.buffered() == 0


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 1000), max_size=20), st.booleans())
def test_garbage_either_splits_or_raises_malformed(
    garbage: bytes, cuts: list[int], v5: bool
) -> None:
    splitter = Splitter(v5=v5, max_payload=MAX_PAYLOAD)
    with contextlib.suppress(MalformedPacket):  # anything else fails the test
        feed_in_chunks(garbage, cuts, splitter)


def test_an_oversize_publish_is_dropped_as_it_streams_in_never_buffered_whole() -> None:
    splitter = Splitter(v5=False, max_payload=1000)
    big = publish(b"t/big", b"y" * 1_000_000, qos=1, pid=9)
    after = publish(b"t/next", b"1")
    seen: list[object] = []
    most = 0
    for at in range(0, len(big), 4096):
        splitter.feed(big[at : at + 4096])
        seen += drain(splitter)
        most = max(most, splitter.buffered())
    splitter.feed(after)
    seen += drain(splitter)
    assert seen == [TooLarge(1, 9, b"t/big", 1_000_000), (b"t/next", b"1")]
    assert most <= 4096


def test_properties_over_the_limit_make_a_publish_too_large() -> None:
    splitter = Splitter(v5=True, max_payload=1000)
    splitter.feed(publish(b"t", b"1", props=b"\x26" * (MAX_PROPERTIES + 1)) + b"\xd0\x00")
    assert drain(splitter) == [TooLarge(0, 0, b"t", 1), Packet(b"\xd0\x00")]


@pytest.mark.parametrize(
    ("data", "v5", "reason"),
    [
        (b"\x30\xff\xff\xff\xff\x01", False, "remaining length longer than 4 bytes"),
        (b"\xd0\x80\x80\x80\x80", False, "remaining length longer than 4 bytes"),
        (b"\x30\x04\x00\x09ab", False, "topic is longer than the packet"),
        (b"\x32\x04\x00\x02ab", False, "topic is longer than the packet"),  # no room for the id
        (b"\x30\x05\x00\x01a\x05x", True, "properties are longer than the packet"),
        (b"\x30\x03\x00\x01a", True, "properties are longer than the packet"),
        (b"\x36\x05\x00\x01a\x00\x01", False, "QoS 3"),
        (b"\x30\x01\x00", False, "too short"),
        (b"\x90" + varint(MAX_OTHER + 1), False, "SUBACK packet of"),
    ],
)
def test_broken_framing_is_malformed_with_a_reason(data: bytes, v5: bool, reason: str) -> None:
    splitter = Splitter(v5=v5, max_payload=MAX_PAYLOAD)
    splitter.feed(data)
    with pytest.raises(MalformedPacket, match=reason):
        drain(splitter)
