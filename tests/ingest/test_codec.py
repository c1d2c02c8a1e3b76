import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import DEFAULT_ROUTES
from gateway.core.state import UpdateMode
from gateway.ingest.codec import IngestError, Route, Router, decode_fields, decode_status

ROUTE = Route("telemetry/#", topic="{#}")


@pytest.mark.parametrize(
    ("mqtt", "expected"),
    [
        ("telemetry/berlin/line1/press7", ("data", "berlin/line1/press7")),
        ("status/berlin/line1/press7", ("status", "berlin/line1/press7")),
    ],
)
def test_default_routes(mqtt: str, expected: tuple[str, str]) -> None:
    route, topic = Router(DEFAULT_ROUTES).route(mqtt)
    assert (route.kind, topic) == expected


def test_templates_prefix_and_captures() -> None:
    router = Router(
        (
            Route("plant/+/+/data", topic="{1}/{2}"),
            Route("raw/#", topic="raw-{#}"),
            Route("keep/#"),
        )
    )
    assert router.route("plant/a/b/data")[1] == "a/b"
    assert router.route("raw/x/y")[1] == "raw-x/y"
    assert router.route("keep/it")[1] == "keep/it"
    for unmapped in ("plant/a/data", "other/x", "$SYS/broker/load"):
        with pytest.raises(IngestError) as err:
            router.route(unmapped)
        assert err.value.reason == "unmapped"


def test_a_device_cannot_write_the_gateways_own_topics() -> None:
    """``$alarms/...`` and every other topic beginning with ``$`` are the gateway's:
    a route that would render one refuses the message (found by an outside check: a
    device publishing to ``telemetry/$alarms/<rule>/<device>`` faked, hid and
    acknowledged alarms on every wall), each time, the same MQTT topic cached."""
    router = Router((*DEFAULT_ROUTES, Route("x/+/#", topic="{1}/{#}")))
    for mqtt in (
        "telemetry/$alarms/hot/dev/1",
        "status/$alarms/hot/dev/1",
        "telemetry/$meta",
        "x/$alarms/a",
    ):
        for _ in range(2):
            with pytest.raises(IngestError) as err:
                router.route(mqtt)
            assert err.value.reason == "reserved_topic"
            assert "begins with '$'" in str(err.value)
    assert router.route("telemetry/a/$b")[1] == "a/$b"  # a '$' inside a level is fine


def test_route_validation() -> None:
    with pytest.raises(ValueError, match=r"\{2\}"):
        Route("a/+/b", topic="{1}/{2}")
    with pytest.raises(ValueError, match="#"):
        Route("a/+", topic="{#}")
    with pytest.raises(ValueError, match="kind"):
        Route("a/#", kind="video")


@pytest.mark.parametrize(
    ("payload", "fields", "ts", "mode"),
    [
        (b'{"t": 21.5, "ts": 1700000000}', {"t": 21.5}, 1700000000.0, UpdateMode.MERGE),
        (b'{"t": 1, "ts": 1700000000123}', {"t": 1}, 1700000000.123, UpdateMode.MERGE),
        (b"21.5", {"value": 21.5}, None, UpdateMode.MERGE),
        (b'"run"', {"value": "run"}, None, UpdateMode.MERGE),
        (b"true", {"value": True}, None, UpdateMode.MERGE),
        (b"", {}, None, UpdateMode.REPLACE),
    ],
)
def test_data_payloads(payload: bytes, fields: dict, ts: float | None, mode: UpdateMode) -> None:
    assert decode_fields(payload, ROUTE, 1024) == (fields, ts, mode)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe\x00garbage", "not_utf8"),
        (b"[1, 2]", "unsupported_json"),
        (b'{"t": 1, "ts": "yesterday"}', "bad_timestamp"),
        (b'{"t": 1, "ts": -5}', "bad_timestamp"),
        (b"x" * 2000, "too_large"),
    ],
)
def test_bad_data_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(IngestError) as err:
        decode_fields(payload, ROUTE, 1024)
    assert err.value.reason == reason
    assert payload.decode("latin-1")[:20] not in str(err.value) or len(payload) < 3


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        (b"online", True),
        (b"offline", False),
        (b"ONLINE\n", True),
        (b"1", True),
        (b"0", False),
        (b'{"online": false}', False),
        (b'{"status": "online"}', True),
        (b'"offline"', False),
        (b"", None),
    ],
)
def test_status_payloads(payload: bytes, online: bool | None) -> None:
    assert decode_status(payload) is online


@pytest.mark.parametrize("payload", [b"maybe", b'{"online": "perhaps"}', b"\xff"])
def test_bad_status_payloads(payload: bytes) -> None:
    with pytest.raises(IngestError) as err:
        decode_status(payload)
    assert err.value.reason == "bad_status"


@settings(max_examples=500)
@given(
    st.binary(max_size=200)
    | st.builds(
        orjson.dumps,
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False)
            | st.text(max_size=8),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=10,
        ),
    )
)
def test_fuzz_payloads_decode_or_refuse(payload: bytes) -> None:
    for decode in (lambda p: decode_fields(p, ROUTE, 150), decode_status):
        try:
            decode(payload)
        except IngestError as err:
            assert err.reason


@given(st.text(max_size=40))
def test_fuzz_topics_route_or_refuse(topic: str) -> None:
    router = Router((Route("a/+/#", topic="{1}-{#}"), *DEFAULT_ROUTES))
    try:
        _route, gw_topic = router.route(topic)
    except IngestError as err:
        assert err.reason == "unmapped"
    else:
        assert gw_topic and "\x00" not in gw_topic
