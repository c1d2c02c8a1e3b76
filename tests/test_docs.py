"""Docs that must follow the code."""

import dataclasses
import pathlib
import re

from gateway.config import (
    AlarmsConfig,
    AuthConfig,
    HistoryConfig,
    MetaConfig,
    MqttConfig,
    PersistConfig,
    ServerConfig,
    SimulatorConfig,
    StateConfig,
)
from gateway.core.protocol import CLOSE_CODES, ERROR_CODES
from gateway.core.walls import WallsConfig

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    for section, cls in (
        ("server", ServerConfig),
        ("auth", AuthConfig),
        ("state", StateConfig),
        ("simulator", SimulatorConfig),
        ("mqtt", MqttConfig),
        ("persist", PersistConfig),
        ("meta", MetaConfig),
        ("alarms", AlarmsConfig),
        ("history", HistoryConfig),
        ("walls", WallsConfig),
    ):
        assert f"### `[{section}]`" in text
        for f in dataclasses.fields(cls):
            assert re.search(rf"^\| `{f.name}` \|", text, re.M), f"{section}.{f.name}"


def test_every_error_and_close_code_is_in_the_protocol_doc() -> None:
    text = (DOCS / "protocol.md").read_text()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in text, code
    for close in CLOSE_CODES:
        assert f"| {close} |" in text, close
