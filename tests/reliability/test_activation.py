"""Socket activation (gateway/serve/activation.py): a listening socket held by the
process that starts the gateway (systemd's deploy/gateway.socket, here the test) and
passed to each gateway process keeps a restart from refusing anyone. A screen that
connects while no gateway runs waits in the socket's backlog and is served by the
next process."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import trio

from gateway.serve.activation import ActivationError, inherited_listeners, passing
from tests.conftest import stop_process
from tests.serve.httpget import http_get

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def activated_gateway(
    tmp: Path, listeners: dict[str, socket.socket], *args: str
) -> AsyncIterator[tuple[trio.Process, Path]]:
    """`gateway run` handed ``listeners`` as systemd would; stopped (SIGTERM, then
    SIGKILL) when the block ends unless the test stopped it."""
    log = tmp / f"gateway-{time.monotonic_ns()}.log"
    prefix, kw = passing(listeners)
    env = {**os.environ, **kw.pop("env")}
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [*prefix, sys.executable, "-m", "gateway", "run", "--port", "0", "--admin-port", "0",
             "--status-interval", "0", *args],
            stdout=out, stderr=out, cwd=ROOT, env=env, **kw,
        )  # fmt: skip
    try:
        yield proc, log
    finally:
        with trio.CancelScope(shield=True):
            await stop_process(proc)


async def listening(proc: trio.Process, log: Path) -> str:
    with trio.fail_after(30):
        while "listening on" not in (text := await trio.Path(log).read_text()):
            if proc.poll() is not None:
                raise AssertionError(f"the gateway exited: {text}")
            await trio.sleep(0.05)
    return text


class Screen:
    """A WebSocket screen on a raw socket: the upgrade, then the server's frames."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.buf = b""

    async def connect_and_ask(self) -> None:
        # a refused connection raises here (ConnectionRefusedError)
        await self.sock.connect(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await self.sock.send(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    async def _fill(self) -> None:
        chunk = await self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed without a frame")
        self.buf += chunk

    async def opened(self) -> dict[str, object]:
        """The 101, then the welcome message."""
        while b"\r\n\r\n" not in self.buf:
            await self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        opcode, payload = await self.frame()
        assert opcode == 1
        welcome: dict[str, object] = orjson.loads(payload)
        assert welcome["type"] == "welcome"
        return welcome

    async def frame(self) -> tuple[int, bytes]:
        while True:
            n, head = (self.buf[1] & 0x7F, 2) if len(self.buf) >= 2 else (0, 99)
            if n == 126:  # 16-bit length (our messages stay far below 64 KiB)
                n, head = (
                    (int.from_bytes(self.buf[2:4], "big"), 4) if len(self.buf) >= 4 else (0, 99)
                )
            if len(self.buf) >= head + n:
                opcode, payload = self.buf[0] & 0x0F, self.buf[head : head + n]
                self.buf = self.buf[head + n :]
                return opcode, payload
            await self._fill()


async def test_a_screen_connecting_during_a_restart_waits_instead_of_being_refused(
    tmp_path: Path,
) -> None:
    held = socket.create_server(("127.0.0.1", 0), backlog=64)  # the supervisor's socket
    port = held.getsockname()[1]
    with held:
        before = Screen(port)
        async with activated_gateway(tmp_path, {"public": held}, "--simulate", "10") as (
            proc,
            log,
        ):
            text = await listening(proc, log)
            assert f"listening on http://127.0.0.1:{port}/" in text
            assert "listeners passed in by the starting process: public" in text
            with trio.fail_after(10):
                await before.connect_and_ask()
                await before.opened()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                while True:  # the screen is told the gateway restarts
                    opcode, payload = await before.frame()
                    if opcode == 8:
                        assert int.from_bytes(payload[:2], "big") == 1012
                        before.sock.close()
                        break
                assert await proc.wait() == 0
        # no gateway runs now: the port still takes connections (the backlog)
        during = Screen(port)
        with trio.fail_after(5):
            await during.connect_and_ask()
        after = Screen(port)
        async with activated_gateway(tmp_path, {"public": held}, "--simulate", "10") as (
            proc,
            log,
        ):
            with trio.fail_after(30):
                await during.opened()  # served by the new process, never refused
                await after.connect_and_ask()
                await after.opened()
            status, _, _ = await http_get(port, "/healthz")
            assert status == 200
            assert proc.poll() is None
            during.sock.close()
            after.sock.close()


async def test_admin_listener_by_name(tmp_path: Path) -> None:
    public = socket.create_server(("127.0.0.1", 0))
    admin = socket.create_server(("127.0.0.1", 0))
    with public, admin:
        listeners = {"admin": admin, "public": public}  # names, not order, decide
        async with activated_gateway(tmp_path, listeners) as (proc, log):
            text = await listening(proc, log)
            pub, adm = public.getsockname()[1], admin.getsockname()[1]
            assert re.search(rf"listening on http://127\.0\.0\.1:{pub}/ .*:{adm}/metrics", text)
            status, _, body = await http_get(adm, "/metrics")
            assert status == 200 and b"gateway_" in body


async def test_a_socket_that_is_not_listening_is_a_clear_error(tmp_path: Path) -> None:
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))  # bound, never listening: a supervisor's mistake
    with bound:
        async with activated_gateway(tmp_path, {"public": bound}) as (proc, log):
            with trio.fail_after(30):
                assert await proc.wait() == 1
            assert "is not a listening TCP socket" in await trio.Path(log).read_text()


def test_variables_meant_for_another_process_are_left_alone() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert inherited_listeners(env, pid=2) == {}
    assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}  # not ours: not consumed
    assert inherited_listeners({}, pid=2) == {}


def test_names_that_are_not_ours_are_refused() -> None:
    env = {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:metrics"}
    with pytest.raises(ActivationError, match="'public' and 'admin'"):
        inherited_listeners(env, pid=7)
    env = {"LISTEN_PID": "7", "LISTEN_FDS": "3"}
    with pytest.raises(ActivationError, match="at most one admin"):
        inherited_listeners(env, pid=7)
