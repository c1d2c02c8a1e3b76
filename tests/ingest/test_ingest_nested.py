"""MqttIngest.handle notes a nested JSON value (stored whole) in the log, and only then:
the payload's bytes decide whether its fields are looked at."""

from __future__ import annotations

import logging

import pytest

from gateway.clock import Clock
from gateway.config import MqttConfig
from gateway.core.state import StateStore
from gateway.ingest.mqtt import MqttIngest

NOTE = "a field holds a JSON object or array"


@pytest.mark.parametrize(
    ("payload", "noted"),
    [
        (b'{"t": 1.5, "pos": [1, 2]}', True),
        (b'{"t": 1.5, "cfg": {"a": 1}}', True),
        (b'{"cfg": {}}', True),
        (b'{"t": 1.5, "label": "[x] {y}"}', False),  # brackets inside a string
        (b'{"t": 1.5, "ts": 1764104400}', False),
        (b"[1, 2]", False),  # refused (an array is not an object): no note
        (b"21.5", False),
    ],
)
async def test_nested_values_are_noted_and_stored_whole(
    payload: bytes, noted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore("e")
    ingest = MqttIngest(MqttConfig(url="mqtt://127.0.0.1:1883"), store, Clock(), 1024)
    with caplog.at_level(logging.INFO, logger="gateway.mqtt"):
        ingest.handle("telemetry/a/b", payload)
    assert (NOTE in caplog.text) is noted
    st = store.get("a/b")
    if payload.startswith(b"["):
        assert st is None and ingest.stats.rejected["unsupported_json"] == 1
        return
    assert st is not None
    if noted:
        assert any(type(v) in (dict, list) for v in st.fields.values())
