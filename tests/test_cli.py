"""The command line as people use it: help, config errors, signals, tail."""

from __future__ import annotations

import os
import re
import signal
import socket
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
        "--workers",
        "--state-dir",
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


def test_the_state_dir_flag_is_persist_state_dir(tmp_path: Path) -> None:
    """A client author read "a gateway with a state directory keeps its epoch" and
    found no way to give one in --help."""
    from gateway.__main__ import _parser, _run_overrides

    args = _parser().parse_args(["run", "--state-dir", str(tmp_path / "s")])
    env = {"GATEWAY_PERSIST_STATE_DIR": "/elsewhere"}
    assert load_config(None, env, _run_overrides(args)).persist.state_dir == str(tmp_path / "s")
    args = _parser().parse_args(["run"])
    assert load_config(None, env, _run_overrides(args)).persist.state_dir == "/elsewhere"


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


async def test_a_second_sigterm_stops_at_once_and_says_what_it_abandons(tmp_path: Path) -> None:
    """A second SIGTERM during the graceful stop ended the process with no trace
    (found by an outside check): it still ends it at once, and says so first."""
    proc = await trio.lowlevel.open_process(
        [*GATEWAY, "run", "--port", "0", "--admin-port", "0", "--state-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        env={**os.environ, "GATEWAY_SERVER_CLOSE_TIMEOUT_S": "20"},
    )
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        with trio.fail_after(15):
            port = await read_port(proc.stderr, lines)
        client = await RawWs.connect(port)  # it never answers the close: the stop waits
        await client.recv_json()
        proc.send_signal(signal.SIGTERM)
        buf = b""
        with trio.fail_after(10):
            while b"SIGTERM: shutting down gracefully" not in buf:
                buf += await proc.stderr.receive_some(4096)
            proc.send_signal(signal.SIGTERM)
            while chunk := await proc.stderr.receive_some(4096):
                buf += chunk
            rc = await proc.wait()
        assert rc == -signal.SIGTERM
        assert b"SIGTERM again: stopping at once, without the final checkpoint" in buf
        assert not (tmp_path / "clean").exists()  # the next start takes a new epoch
        client.close()
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


# -- the first-hour papercuts: one clear line, the right exit code, no traceback ------------


def test_a_taken_port_is_one_line_naming_it_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags in (
            ["--port", str(port), "--admin-port", "0"],
            ["--port", "0", "--admin-port", str(port)],
        ):
            proc = run("run", *flags)
            assert proc.returncode == 1, proc.stderr
            lines = proc.stderr.splitlines()
            assert len(lines) == 1, proc.stderr
            assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
            assert "Traceback" not in proc.stderr
        debug = run("run", "--port", str(port), "--admin-port", "0", "--log-level", "debug")
        assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--simulat", "10"],
        ["run", "--port", "0", "--admin-p", "0"],
        ["tail", "x", "--cou", "1"],
    ],
)
def test_shortened_flags_are_refused(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_tail_help_shows_the_defaults() -> None:
    out = run("tail", "--help").stdout
    assert "(default: ws://127.0.0.1:8080/ws)" in out


def test_mqtt_topic_needs_a_broker_and_a_valid_filter() -> None:
    proc = run("run", "--port", "0", "--admin-port", "0", "--mqtt-topic", "plant/#")
    assert proc.returncode == 2 and "--mqtt-topic: needs a broker" in proc.stderr
    proc = run("run", "--mqtt", "mqtt://127.0.0.1:1", "--mqtt-topic", "plant/#/x")
    assert proc.returncode == 2 and "mqtt.subscriptions[0].filter" in proc.stderr


def tail_cmd(port: int, *args: str) -> list[str]:
    return [*GATEWAY, "tail", *args, "--url", f"ws://127.0.0.1:{port}/ws"]


async def test_tail_count_prints_exactly_that_many_lines(nursery: trio.Nursery) -> None:
    gw = await start_gateway(nursery)
    for i in range(50):  # one snapshot frame of 50 topics
        gw.store.apply(f"berlin/line1/d{i}", {"t": 1.0}, gw.clock.wall())
    with trio.fail_after(20):
        done = await trio.run_process(
            tail_cmd(gw.port, "berlin/#", "--count", "5"), capture_stdout=True, capture_stderr=True
        )
    assert done.returncode == 0
    assert len(done.stdout.decode().splitlines()) == 5
    gw.server.request_shutdown()


async def test_tail_says_when_nothing_matches_then_shows_what_comes(nursery: trio.Nursery) -> None:
    gw = await start_gateway(nursery)
    gw.store.apply("berlin/line1/d1", {"t": 1.0}, gw.clock.wall())
    proc = await trio.lowlevel.open_process(
        tail_cmd(gw.port, "site/#", "--count", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        err = b""
        with trio.fail_after(15):
            while b"waiting" not in err:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, err
                err += chunk
        assert b"0 topics match 'site/#'" in err
        assert f"curl -s 'http://127.0.0.1:{gw.port}/api/topics'".encode() in err
        gw.store.apply("site/a", {"t": 2.0}, gw.clock.wall())
        with trio.fail_after(15):
            assert await proc.wait() == 0
        assert b"site/a" in await proc.stdout.receive_some(4096)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    gw.server.request_shutdown()


async def test_tail_exits_on_a_refused_filter(nursery: trio.Nursery) -> None:
    gw = await start_gateway(nursery)
    with trio.fail_after(20):
        local = await trio.run_process(tail_cmd(gw.port, "a/#/b"), capture_stderr=True, check=False)
        # a filter longer than the gateway allows passes the local rules: the gateway's
        # error reply ends the tail
        remote = await trio.run_process(
            tail_cmd(gw.port, "x" * 2000), capture_stderr=True, check=False
        )
    assert local.returncode == 2 and b"'#' is only allowed as the last level" in local.stderr
    assert remote.returncode == 2 and b"the gateway refused" in remote.stderr
    assert b"Traceback" not in local.stderr + remote.stderr
    gw.server.request_shutdown()


async def read_until(
    stream: trio.abc.ReceiveStream, pattern: bytes, buf: bytearray
) -> re.Match[bytes]:
    while True:
        m = re.search(pattern, bytes(buf))
        if m:
            return m
        chunk = await stream.receive_some(4096)
        assert chunk, bytes(buf).decode()
        buf += chunk


STATUS = (
    rb"devices (\d+)/(\d+) online \| topics (\d+) \| screens (\d+) \| ([\d,]+) msg/s"
    rb" \| data age ([\d.]+) s"
)


async def test_run_logs_a_status_line_and_a_summary_when_not_on_a_terminal() -> None:
    proc = await trio.lowlevel.open_process(
        [
            *GATEWAY,
            "run",
            "--simulate",
            "20",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--status-interval",
            "0.2",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        buf = bytearray()
        with trio.fail_after(15):
            m = await read_until(proc.stderr, rb"INFO gateway.status: " + STATUS, buf)
        assert m.group(1) == m.group(2) == m.group(3) == b"20"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            m = await read_until(proc.stderr, rb"ran [^:]+: ([\d,]+) device messages", buf)
            assert await proc.wait() == 0
        assert int(m.group(1).replace(b",", b"")) > 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_run_rewrites_one_status_line_on_a_terminal() -> None:
    master, slave = os.openpty()
    proc = await trio.lowlevel.open_process(
        [*GATEWAY, "run", "--simulate", "20", "--port", "0", "--admin-port", "0"],
        stderr=slave,
        stdout=subprocess.DEVNULL,
    )
    os.close(slave)
    try:
        out = bytearray()
        with trio.fail_after(20):
            while out.count(b"\r\x1b[Kdevices") < 2:
                await trio.lowlevel.wait_readable(master)
                out += os.read(master, 4096)
        # the line is redrawn in place (carriage return, clear), not a new log line
        assert re.search(rb"\r\x1b\[K" + STATUS, out)
        assert b"INFO gateway.status" not in out
    finally:
        os.close(master)
        proc.kill()
        await proc.wait()


async def test_tail_says_once_that_no_gateway_answers_and_when_one_does(
    nursery: trio.Nursery,
) -> None:
    from tests.broker import free_port

    port = free_port()
    proc = await trio.lowlevel.open_process(
        tail_cmd(port, "berlin/#", "--count", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        err = bytearray()
        with trio.fail_after(15):
            await read_until(proc.stderr, rb"no connection to .*; retrying\n", err)
        gw = await start_gateway(nursery, server={"port": port})
        gw.store.apply("berlin/line1/d1", {"t": 1.0}, gw.clock.wall())
        with trio.fail_after(40):  # the tail's backoff has grown a little by now
            await read_until(proc.stderr, rb"connected to ws://", err)
            assert await proc.wait() == 0
        assert b"berlin/line1/d1" in await proc.stdout.receive_some(4096)
        assert err.count(b"no connection") == 1  # one line, not one per attempt
        assert b"INFO" not in err
        gw.server.request_shutdown()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
