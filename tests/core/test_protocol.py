import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.protocol import (
    ERROR_CODES,
    Ack,
    Auth,
    DecodeLimits,
    Error,
    Ping,
    Pong,
    ProtocolError,
    Resume,
    Subscribe,
    Unsubscribe,
    Welcome,
    decode_client,
    decode_server,
    encode,
    encode_batch,
    encode_state,
    encode_topic,
)
from gateway.core.state import Delta, Snapshot, StateStore, UpdateMode


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"type": "auth", "token": "abc"}, Auth("abc")),
        (
            {"type": "subscribe", "id": "s1", "filters": ["a/#", "b/+", "a/#"], "rate_hz": 2},
            Subscribe("s1", ("a/#", "b/+"), 2.0),
        ),
        ({"type": "subscribe", "id": "s", "filters": ["#"], "extra": 1}, Subscribe("s", ("#",))),
        ({"type": "unsubscribe", "id": "s1"}, Unsubscribe("s1")),
        ({"type": "resume", "epoch": "e", "topics": {"a/b": 3}}, Resume("e", {"a/b": 3})),
        ({"type": "ping"}, Ping(None)),
        ({"type": "ping", "id": 7}, Ping(7)),
    ],
)
def test_decodes_every_client_message(raw: dict[str, object], expected: object) -> None:
    assert decode_client(orjson.dumps(raw)) == expected
    assert decode_client(orjson.dumps(raw).decode()) == expected


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1,2]", "bad_json"),
        (b'"auth"', "bad_json"),
        (b"{}", "bad_message"),
        (b'{"type": 5}', "bad_message"),
        (b'{"type": "publish"}', "unknown_type"),
        (b'{"type": "auth"}', "bad_message"),
        (b'{"type": "auth", "token": ""}', "bad_message"),
        (b'{"type": "subscribe", "id": "s", "filters": []}', "bad_message"),
        (b'{"type": "subscribe", "id": "s", "filters": "a/#"}', "bad_message"),
        (b'{"type": "subscribe", "id": "s", "filters": ["a/#/b"]}', "bad_filter"),
        (b'{"type": "subscribe", "id": "s", "filters": [1]}', "bad_filter"),
        (b'{"type": "subscribe", "id": "s", "filters": ["a"], "rate_hz": 0}', "bad_rate"),
        (b'{"type": "subscribe", "id": "s", "filters": ["a"], "rate_hz": true}', "bad_message"),
        (b'{"type": "subscribe", "filters": ["a"]}', "bad_message"),
        (b'{"type": "resume", "epoch": "e", "topics": {"a/#": 1}}', "bad_filter"),
        (b'{"type": "resume", "epoch": "e", "topics": {"a": -1}}', "bad_message"),
        (b'{"type": "resume", "epoch": "e", "topics": {"a": 1.5}}', "bad_message"),
        (b'{"type": "resume", "epoch": "e"}', "bad_message"),
        (b'{"type": "ping", "id": [1]}', "bad_message"),
        (b'{"type": "ping", "id": 9007199254740993}', "bad_message"),
        (b'{"type": "ping", "id": 1e400}', "bad_json"),
        (b"[" * 5000 + b"]" * 5000, "bad_json"),
    ],
)
def test_refusals_carry_a_documented_code(data: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_client(data)
    assert err.value.code == code
    assert code in ERROR_CODES


def test_limits_apply() -> None:
    limits = DecodeLimits(max_filters=2, max_resume_topics=1, max_id_len=3, max_topic_bytes=5)
    for raw in (
        {"type": "subscribe", "id": "s", "filters": ["a", "b", "c"]},
        {"type": "subscribe", "id": "toolong", "filters": ["a"]},
        {"type": "resume", "epoch": "e", "topics": {"a": 1, "b": 2}},
        {"type": "subscribe", "id": "s", "filters": ["abcdef"]},
    ):
        with pytest.raises(ProtocolError):
            decode_client(orjson.dumps(raw), limits)


def test_subscribe_errors_name_the_subscription() -> None:
    with pytest.raises(ProtocolError) as err:
        decode_client(b'{"type": "subscribe", "id": "s9", "filters": ["#/a"]}')
    assert err.value.ref == "s9"


def test_auth_token_never_in_repr() -> None:
    assert "sekrit" not in repr(Auth("sekrit"))


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_client(data)
    except ProtocolError as err:
        assert err.code in ERROR_CODES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["auth", "subscribe", "unsubscribe", "resume", "ping", "x"])},
    optional={
        "token": json_values,
        "id": json_values,
        "filters": st.lists(st.text(max_size=6) | json_values, max_size=4) | json_values,
        "rate_hz": json_values,
        "epoch": json_values,
        "topics": st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values,
    },
)


@settings(max_examples=1000)
@given(message_like | json_values)
def test_fuzz_arbitrary_json(value: object) -> None:
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return  # e.g. integers beyond 64 bits cannot be produced by orjson
    try:
        msg = decode_client(data)
    except ProtocolError as err:
        assert err.code in ERROR_CODES
    else:
        assert isinstance(msg, Auth | Subscribe | Unsubscribe | Resume | Ping)


def test_state_fragments_roundtrip_and_batch_without_reencoding() -> None:
    snap = Snapshot("a/b", 4, {"t": 1.5}, True, False, 10.0, 11.0)
    delta = Delta("a/b", 4, 6, {"t": 2}, ("x",), 12.0, 13.0, True, False, True)
    plain = Delta("a/c", 1, 2, {"t": 2}, (), None, 13.0, False, None, False)
    frags = [encode_state(m) for m in (snap, delta, plain)]
    batch = encode_batch(frags)
    for frag in frags:
        assert frag in batch
    assert decode_server(batch) == [snap, delta, plain]
    assert encode_batch(frags[:1]) is frags[0]
    assert b"unset" not in frags[2] and b"online" not in frags[2]


def test_control_messages_roundtrip() -> None:
    msgs = [
        Welcome("e1", 1.5, 15.0, False, {"max_message_bytes": 65536}),
        Ack("subscribe", "s1", ("a/#",), 10.0),
        Ack("resume", resumed=False),
        Error("forbidden", "no", "s1"),
        Pong(3, 2.0),
    ]
    for m in msgs:
        data = encode(m)
        assert b"null" not in data
        assert decode_server(data) == [m]


@pytest.mark.parametrize("data", [b"{}", b"[]", b'{"type":"delta"}', b'{"type":"batch","items":3}'])
def test_server_decoder_refuses_malformed(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_server(data)


_field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2), st.sampled_from(["a", "b"])
)
_store_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("apply"),
            st.dictionaries(st.sampled_from("pqrst"), _field_values, max_size=4),
            st.sampled_from([UpdateMode.MERGE, UpdateMode.REPLACE]),
            st.one_of(st.none(), st.floats(0, 2e9)),
        ),
        st.tuples(st.just("presence"), st.booleans()),
        st.tuples(st.just("stale")),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(_store_ops)
def test_encode_topic_is_encode_state_of_the_stores_answer(ops: list[tuple]) -> None:
    """The hub's fused encoder writes the very bytes of encode_state(store.diff()),
    or leaves the answer to the store (a snapshot for "size", "window", "ahead")."""
    store = StateStore("e", max_tombstones=2)
    now = 1000.0
    for op in ops:
        now += 1.5
        try:
            if op[0] == "apply":
                store.apply("a/b", op[1], now, device_ts=op[3], mode=op[2])
            elif op[0] == "presence":
                store.set_presence("a/b", op[1], now)
            else:
                store.sweep_stale(now + 1e6)
        except ValueError:
            pass  # a refused update (floats like inf): the store is unchanged
    state = store.get("a/b")
    if state is None:
        return
    for base in [None, *range(state.seq + 2)]:
        fused = encode_topic(state, base)
        answer = store.diff("a/b", base)
        if fused is not None:
            assert answer is not None
            assert fused == encode_state(answer)
        else:
            assert base is not None
            assert answer is None or (type(answer) is Snapshot and answer.reason)
