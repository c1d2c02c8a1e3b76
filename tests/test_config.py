"""Each configuration section checks itself; config.py stands without the simulator."""

from __future__ import annotations

import ast
import pathlib

import pytest

from gateway.__main__ import _check_simulator
from gateway.config import AuthConfig, ConfigError, MqttConfig, ServerConfig, load_config

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "gateway" / "config.py"


def test_config_does_not_import_the_simulator() -> None:
    imported = set()
    for node in ast.walk(ast.parse(CONFIG.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not any(name.split(".")[0] == "devices_sim" for name in imported), imported


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (ServerConfig(port=70_000), "server.port: must be 0"),
        (ServerConfig(stall_s=0), "server.stall_s: must be > 0"),
        (ServerConfig(default_rate_hz=50.0, tick_hz=20.0), "server.default_rate_hz: 50.0 exceeds"),
        (AuthConfig(mode="ldap"), "auth.mode: 'ldap' is not one of"),
        (AuthConfig(mode="jwt", jwt_secret="short"), "auth.jwt_secret: HS256 needs"),
        (MqttConfig(protocol="4"), "mqtt.protocol: '4' is not"),
        (MqttConfig(reconnect_min_s=5, reconnect_max_s=1), "mqtt.reconnect_max_s: must be >="),
        (MqttConfig(read_gather_ms=-1), "mqtt.read_gather_ms: must be between 0 and 100"),
    ],
)
def test_each_section_checks_itself_with_the_same_words_as_load_config(
    section: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        section.validate()  # type: ignore[attr-defined]
    name = {ServerConfig: "server", AuthConfig: "auth", MqttConfig: "mqtt"}[type(section)]
    changed = {k: v for k, v in vars(section).items() if v != getattr(type(section)(), k)}
    if name == "server":
        changed.setdefault("port", 0)
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={name: changed})


def test_a_scenario_naming_a_missing_file_is_a_configuration_error(
    tmp_path: pathlib.Path,
) -> None:
    cfg = load_config(
        overrides={"simulator": {"devices": 10, "scenario": str(tmp_path / "missing.toml")}}
    )
    with pytest.raises(ConfigError, match="simulator: "):
        _check_simulator(cfg)
