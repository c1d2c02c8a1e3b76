"""Property-based fuzzing of everything that parses outside input: the client-message
decoder, topic and filter validation, token extraction and the MQTT payload codecs,
each fed whole messages and every prefix of valid ones (a message cut byte by byte).
Each input is accepted or refused with the project's own error, never another one."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import AuthError, extract_token
from gateway.core.protocol import ERROR_CODES, ProtocolError, decode_client
from gateway.core.topics import TopicError, validate_filter, validate_topic
from gateway.ingest.codec import IngestError, Route, decode_fields, decode_status

ROUTE = Route("telemetry/#", topic="{#}")

VALID_MESSAGES = [
    {"type": "subscribe", "id": "s", "filters": ["site/+/temp", "plant/#"], "rate_hz": 5},
    {"type": "unsubscribe", "id": "s"},
    {"type": "resume", "epoch": "e1", "topics": {"a/b": 3, "c": 9}},
    {"type": "auth", "token": "abc.def.ghi"},
    {"type": "ping", "id": 7},
]


def client_decoder_outcome(data: bytes) -> None:
    try:
        decode_client(data)
    except ProtocolError as err:
        assert err.code in ERROR_CODES


@given(st.sampled_from(VALID_MESSAGES), st.data())
def test_client_messages_cut_anywhere_or_with_a_byte_changed(
    msg: dict, data: st.DataObject
) -> None:
    raw = orjson.dumps(msg)
    for end in range(len(raw) + 1):  # every prefix, byte by byte
        client_decoder_outcome(raw[:end])
    i = data.draw(st.integers(0, len(raw) - 1))
    client_decoder_outcome(raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1 :])
    client_decoder_outcome(raw.decode("latin-1"))  # a str, as a text frame arrives


@given(st.text(max_size=64) | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_topic_and_filter_validation_accept_or_refuse(text: str) -> None:
    for validate in (validate_topic, validate_filter):
        try:
            out = validate(text, 1024)
        except TopicError:
            continue
        assert out and "\x00" not in out


headers = st.lists(
    st.tuples(
        st.sampled_from([b"authorization", b"Authorization", b"host", b"x"])
        | st.binary(max_size=8),
        st.binary(max_size=40) | st.sampled_from([b"Bearer ", b"Bearer x.y.z", b"bearer  t"]),
    ),
    max_size=4,
)
targets = st.binary(max_size=60) | st.builds(
    lambda q: b"/ws?" + q, st.binary(max_size=50) | st.sampled_from([b"access_token=", b"a=%zz"])
)


@given(headers, targets)
@settings(max_examples=300)
def test_token_extraction_returns_a_token_none_or_an_auth_error(
    hs: list[tuple[bytes, bytes]], target: bytes
) -> None:
    try:
        token = extract_token(hs, target)
    except AuthError as err:
        assert err.reason == "malformed"
    else:
        assert token is None or isinstance(token, str)


PAYLOADS = [
    b'{"temperature": 21.5, "humidity": 40, "ts": 1700000000.5}',
    b'{"status":"run","count":3,"ts":1700000000123}',
    b"21.5",
    b"online",
    b'{"state":"offline"}',
]


@given(st.sampled_from(PAYLOADS), st.data())
def test_mqtt_payloads_cut_anywhere_decode_or_refuse(payload: bytes, data: st.DataObject) -> None:
    cuts = [payload[:end] for end in range(len(payload) + 1)]
    i = data.draw(st.integers(0, len(payload) - 1))
    cuts.append(payload[:i] + bytes([data.draw(st.integers(0, 255))]) + payload[i + 1 :])
    for p in cuts:
        for decode in (lambda p: decode_fields(p, ROUTE, 150), decode_status):
            try:
                decode(p)
            except IngestError as err:
                assert err.reason
