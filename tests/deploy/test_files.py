"""The deployment files are well-formed and refer to files that exist (the compose stack
itself needs a container engine this machine does not have: docs/deployment.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    unit = tmp_path / "gateway.service"
    text = (DEPLOY / "gateway.service").read_text()
    assert "ExecStart=/opt/telemetry-gateway/bin/gateway run --config" in text
    unit.write_text(text.replace("/opt/telemetry-gateway/bin/gateway", "/bin/true"))
    socket_unit = tmp_path / "gateway.socket"
    socket_text = (DEPLOY / "gateway.socket").read_text()
    # the name gateway/serve/activation.py takes the public listener by
    assert "FileDescriptorName=public" in socket_text
    assert "Service=gateway.service" in socket_text
    socket_unit.write_text(socket_text)
    out = subprocess.run(
        [analyze, "verify", str(unit), str(socket_unit)], capture_output=True, text=True
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_the_compose_stack_refers_to_real_files_and_has_every_part(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "mosquitto",
        "fleet",
        "gateway-1",
        "gateway-2",
        "nginx",
        "prometheus",
        "grafana",
    } <= set(services)
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    nginx_env = services["nginx"]["environment"]
    template = (DEPLOY / "nginx.conf.template").read_text()
    for var in ("LISTEN", "RUN_DIR", "GATEWAY_1", "GATEWAY_2", "SHARD_A", "SHARD_B"):
        assert "${" + var + "}" in template and var in nginx_env


def test_the_compose_prometheus_config_and_rules_check(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    shutil.copy(DEPLOY / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY.parent / "grafana" / "alerts.yml", tmp_path / "alerts.yml")
    out = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
