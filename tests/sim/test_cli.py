"""devices-sim as people run it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.broker import Mosquitto

SIM = [sys.executable, "-m", "devices_sim"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIM, *args], capture_output=True, text=True, timeout=60, check=False)


def test_help() -> None:
    out = run("--help").stdout
    for flag in (
        "--devices",
        "--sites",
        "--rate",
        "--seed",
        "--duration",
        "--scenario",
        "--mqtt",
        "--connections",
        "--config",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stdout", "--kinds", "env,robot"], "unknown sensor kind 'robot'"),
        (["--stdout", "--rate", "-2"], "rate must be > 0"),
        (["--stdout", "--duration", "0"], "--duration must be > 0"),
        (["--mqtt", "http://x"], "expected mqtt://"),
    ],
)
def test_bad_configuration_exits_2_and_says_why(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_scenario_naming_a_missing_site(tmp_path: Path) -> None:
    s = tmp_path / "s.toml"
    s.write_text('[[event]]\nat_s = 30\naction = "offline"\nsite = "atlantis"\n')
    proc = run("--stdout", "--scenario", str(s))
    assert proc.returncode == 2 and "no site 'atlantis'" in proc.stderr


def test_same_seed_same_values_on_stdout() -> None:
    def values(seed: str) -> list[tuple[str, dict]]:
        proc = run("--stdout", "--devices", "5", "--rate", "10", "--duration", "1", "--seed", seed)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        data = [
            (r["topic"], {k: v for k, v in r["payload"].items() if k != "ts"})
            for r in rows
            if r["topic"].startswith("telemetry/")
        ]
        return data[:40]

    a, b, c = values("7"), values("7"), values("8")
    assert len(a) == 40 and a == b and a != c


async def test_mqtt_run_stops_by_itself_with_a_summary(mosquitto: Mosquitto) -> None:
    done = await trio.run_process(
        [
            *SIM,
            "--mqtt",
            mosquitto.url,
            "--devices",
            "20",
            "--rate",
            "5",
            "--duration",
            "2",
            "--quiet",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "summary:" in err and ", 0 publish errors" in err and "20 devices" in err
    assert "0 failed connection attempts" in err


def test_shortened_flags_are_refused() -> None:
    proc = run("--stdout", "--devic", "3", "--duration", "1")
    assert proc.returncode == 2 and "unrecognized arguments: --devic" in proc.stderr


async def test_a_broker_refusing_every_connection_is_reported_as_such(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq", listener_options=["allow_anonymous false"])
    await broker.start()
    try:
        with trio.fail_after(40):
            done = await trio.run_process(
                [*SIM, "--mqtt", broker.url, "--devices", "3", "--connect-timeout", "3"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        await broker.stop()
    err = done.stderr.decode()
    status = [line for line in err.splitlines() if line.startswith("connections ")]
    assert done.returncode == 1, err
    assert status, err  # a status line every second while it tries
    for line in status:
        assert line.startswith("connections 0/3  devices online 0/3"), line
    assert re.search(r"errors [1-9]", status[-1]) and "Not authorized" in status[-1]
    last = err.splitlines()[-1]
    assert last.startswith("devices-sim: 3 of 3 connections") and "Not authorized" in last
    assert "Traceback" not in err


async def test_ctrl_c_stops_cleanly_and_every_device_says_offline(mosquitto: Mosquitto) -> None:
    proc = await trio.lowlevel.open_process(
        [*SIM, "--mqtt", mosquitto.url, "--devices", "300", "--rate", "2", "--quiet"],
        stderr=subprocess.PIPE,
    )
    try:
        sub = [
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", "status/#",
            "-v", "-W", "5",
        ]  # fmt: skip
        with trio.fail_after(20):  # every device announced itself (retained)
            while True:
                seen = await trio.run_process([*sub, "-C", "300"], capture_stdout=True, check=False)
                if seen.stdout.count(b" online") == 300:
                    break
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await proc.wait() == 0
        with trio.fail_after(20):
            after = await trio.run_process([*sub, "-C", "300"], capture_stdout=True)
        assert after.stdout.count(b" offline") == 300
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
