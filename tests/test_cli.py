"""The command line as people use it: help, config errors, signals, tail."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import trio

from gateway.config import ConfigError, load_config
from tests.gw import start_gateway
from tests.serve.rawws import RawWs

GATEWAY = [sys.executable, "-m", "gateway"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_documents_every_option() -> None:
    top = run("--help")
    assert top.returncode == 0 and "run" in top.stdout and "tail" in top.stdout
    sub = run("run", "--help")
    for flag in (
        "--host",
        "--port",
        "--admin-port",
        "--config",
        "--simulate",
        "--mqtt",
        "--allow-anonymous",
    ):
        assert flag in sub.stdout, flag
    assert "--json" in run("tail", "--help").stdout


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[server]\nprot = 1\n", {}, "server.prot: unknown key"),
        ("[server]\nport = 'x'\n", {}, "server.port: expected an integer"),
        ("[nope]\n", {}, "nope: unknown section"),
        ("[auth]\nmode = 'magic'\n", {}, "auth.mode: 'magic' is not one of"),
        ("[auth]\nmode = 'static'\n", {}, "auth.tokens: auth.mode = 'static' needs"),
        ("[auth]\nmode = 'jwt'\njwt_secret = 'short'\n", {}, "auth.jwt_secret"),
        ("[server]\nport = 70000\n", {}, "server.port: must be 0"),
        ("[state]\ndeadbands = [{filter = 'a/#/b', abs = 1}]\n", {}, "state.deadbands[0].filter"),
        ("", {"GATEWAY_SERVER_PORT": "eighty"}, "server.port: expected an integer"),
        ("not toml [", {}, "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(cfg, env)
    proc = run("run", "--config", str(cfg), env=env)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_config_sources_layer_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[server]\nport = 1000\nadmin_port = 1001\nheartbeat_s = 5\n")
    c = load_config(
        cfg,
        {"GATEWAY_SERVER_PORT": "2000", "GATEWAY_SERVER_HEARTBEAT_S": "7.5"},
        {"server": {"port": 3000}},
    )
    assert (c.server.port, c.server.admin_port, c.server.heartbeat_s) == (3000, 1001, 7.5)


def test_anonymous_on_a_public_address_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="--allow-anonymous"):
        load_config(overrides={"server": {"host": "0.0.0.0"}})
    assert load_config(overrides={"server": {"host": "0.0.0.0", "allow_anonymous": True}})
    proc = run("run", "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2 and "--allow-anonymous" in proc.stderr


async def read_port(stream: trio.abc.ReceiveStream, lines: list[str]) -> int:
    buf = b""
    while True:
        chunk = await stream.receive_some(4096)
        assert chunk, "gateway exited early:\n" + buf.decode()
        buf += chunk
        lines[:] = buf.decode().splitlines()
        m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)/", buf)
        if m:
            return int(m.group(1))


async def test_sigterm_closes_clients_with_1012_and_exits_0() -> None:
    proc = await trio.lowlevel.open_process(
        [*GATEWAY, "run", "--port", "0", "--admin-port", "0"],
        stderr=subprocess.PIPE,
        env={**os.environ, "GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S": "3"},
    )
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        with trio.fail_after(15):
            port = await read_port(proc.stderr, lines)
        clients = [await RawWs.connect(port) for _ in range(3)]
        for c in clients:
            await c.recv_json()
        started = trio.current_time()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            codes = [await c.close_code_at_end() for c in clients]
            rc = await proc.wait()
        assert codes == [1012, 1012, 1012]
        assert rc == 0
        assert trio.current_time() - started < 3 + 2
        for c in clients:
            c.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_tail_prints_live_updates_as_json(nursery: trio.Nursery) -> None:
    gw = await start_gateway(nursery)
    gw.store.apply("site/a/1", {"t": 1.0}, gw.clock.wall())
    gw.store.apply("other/x", {"t": 1.0}, gw.clock.wall())

    async def feed() -> None:
        for n in range(2, 100):
            await trio.sleep(0.05)
            gw.store.apply("site/a/1", {"t": float(n)}, gw.clock.wall())

    nursery.start_soon(feed)
    with trio.fail_after(20):
        done = await trio.run_process(
            [
                *GATEWAY,
                "tail",
                "site/#",
                "--url",
                f"ws://127.0.0.1:{gw.port}/ws",
                "--json",
                "--count",
                "3",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
    lines = [orjson.loads(x) for x in done.stdout.decode().splitlines()]
    assert len(lines) == 3
    assert lines[0]["kind"] == "snapshot" and lines[0]["topic"] == "site/a/1"
    assert [x["kind"] for x in lines[1:]] == ["delta", "delta"]
    assert lines[2]["seq"] > lines[1]["seq"] > lines[0]["seq"]
    gw.server.request_shutdown()
