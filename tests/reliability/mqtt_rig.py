"""A gateway under MQTT load, and the broker faults the fault and chaos tests inject.

The rig: a real mosquitto with two listeners (``fleet_port`` for the publishers, and
``gw_port`` with ``max_connections 1`` for the gateway alone), a password file (the
gateway logs in as ``gw``; anonymous publishers stay allowed), a ``devices-sim``
subprocess publishing 1,000 devices at 5 Hz (5,000 msg/s) and an in-process gateway
with 100 WebSocket screens. Between the gateway and its listener sits :class:`Relay`,
a TCP relay that can reset every connection it carries (RST) and hold new ones off,
so that "the broker resets us" and "the broker refuses us" are faults like the others.

Every process here is started by the rig and stopped by it, by its own handle.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.client import GatewayClient
from tests.broker import Mosquitto, free_port
from tests.conftest import require_binary, stop_process
from tests.gw import url
from tests.serve.httpget import http_get

ROOT = Path(__file__).resolve().parent.parent.parent
FAULTS = (
    "sigterm",
    "sigkill",
    "sigstop",
    "restart",
    "reset",
    "refuse_max_connections",
    "refuse_bad_credentials",
)
SCREEN_FILTER = "berlin/line1/#"
SCREEN_TOPICS = 16  # of the 1,000 devices on 8 sites x 8 lines, device i % 64 == 0
GW_USER, GW_PASSWORD = "gw", "right-password"
#: the gateway's MQTT settings: a hang is detected after 3 s, reconnects within 0.5 s
MQTT = {"keepalive_s": 2.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "stable_s": 5.0}


class Relay:
    """127.0.0.1:port -> 127.0.0.1:upstream, byte for byte."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.hold = False  # close new connections at once (the broker is "unreachable")
        self.accepted = 0  # connections relayed to the broker
        self._conns: set[tuple[trio.CancelScope, tuple[trio.SocketStream, ...]]] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    def reset_all(self) -> None:
        """Abort every relayed connection with a TCP reset, both ways."""
        for scope, streams in list(self._conns):
            for s in streams:
                s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            scope.cancel()

    async def _handle(self, down: trio.SocketStream) -> None:
        if self.hold:
            await down.aclose()
            return
        try:
            up = await trio.open_tcp_stream("127.0.0.1", self.upstream)
        except OSError:
            await down.aclose()
            return
        self.accepted += 1
        entry = (trio.CancelScope(), (down, up))
        self._conns.add(entry)
        try:
            with entry[0]:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, down, up, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, up, down, nursery.cancel_scope)
        finally:
            self._conns.discard(entry)
            for s in (down, up):
                s.socket.close()

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.cancel()


class Rig:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.passwd = workdir / "passwd"
        self.passwd_tool = require_binary("mosquitto_passwd", "mosquitto")
        self.broker = Mosquitto(
            workdir / "mosquitto",
            listener_options=["allow_anonymous true", f"password_file {self.passwd}"],
        )
        self.gw_port = free_port()
        with self.broker.conf.open("a") as f:
            f.write(f"listener {self.gw_port} 127.0.0.1\nmax_connections 1\n")
        self.relay = Relay(self.gw_port)
        self.fleet: trio.Process | None = None
        self.fleet_log = workdir / "devices-sim.log"
        self.squatter: paho.Client | None = None
        self.gw: Gateway | None = None
        self.screens: list[GatewayClient] = []

    async def set_password(self, password: str, *, reload: bool) -> None:
        await trio.run_process([self.passwd_tool, "-c", "-b", str(self.passwd), GW_USER, password])
        os.chmod(self.passwd, 0o600)
        if reload:
            assert self.broker.proc is not None
            self.broker.proc.send_signal(signal.SIGHUP)

    async def start(
        self, nursery: trio.Nursery, factory: Callable[..., Any], *, relay: bool = True
    ) -> None:
        """Start the broker and the gateway, connected through the relay or directly."""
        await self.set_password(GW_PASSWORD, reload=False)
        await self.broker.start()
        await nursery.start(self.relay.run)
        port = self.relay.port if relay else self.gw_port
        self.gw = await factory(
            mqtt={"url": f"mqtt://{GW_USER}:{GW_PASSWORD}@127.0.0.1:{port}", **MQTT}
        )

    async def start_fleet(self, devices: int = 1000, rate: float = 5.0) -> None:
        with self.fleet_log.open("wb") as log:
            self.fleet = await trio.lowlevel.open_process(
                [sys.executable, "-m", "devices_sim", "--mqtt", self.broker.url, "--devices",
                 str(devices), "--rate", str(rate), "--sites", "8", "--lines", "8", "--connections",
                 "4", "--quiet"],
                stderr=log,
                cwd=ROOT,
            )  # fmt: skip

    async def stop_fleet(self) -> str:
        """A clean stop (SIGTERM: every device publishes offline); how it ended. Its exit
        status is 1 after a broker fault (messages it could not publish are errors)."""
        assert self.fleet is not None
        if self.fleet.returncode is not None:
            return f"devices-sim had exited: {self.fleet_log.read_text()[-3000:]}"
        await stop_process(self.fleet)
        log = self.fleet_log.read_text()
        if self.fleet.returncode not in (0, 1) or "Traceback" in log or "summary:" not in log:
            return f"devices-sim exited {self.fleet.returncode}: {log[-3000:]}"
        return "stopped cleanly"

    async def add_screens(self, nursery: trio.Nursery, n: int) -> list[GatewayClient]:
        assert self.gw is not None
        new = [
            GatewayClient(url(self.gw), [SCREEN_FILTER], rate_hz=1, backoff_cap_s=2.0)
            for _ in range(n)
        ]
        for c in new:
            await nursery.start(c.run)
        self.screens += new
        return new

    async def wait_for_data(self, since: float = 0.0) -> None:
        """Every screen holds fresh data of every device under its filter, measured by
        the devices after ``since`` (wall time): a retained status from a restarted
        broker also clears the stale flag, but only new data proves the flow."""
        with trio.fail_after(20):
            for c in self.screens:
                await c.wait_until(
                    lambda m: (
                        len(m.topics) == SCREEN_TOPICS
                        and all(
                            not t.stale and t.ts is not None and t.ts > since
                            for t in m.topics.values()
                        )
                    )
                )

    def settled(self) -> None:
        """Set-up done: move every object alive now (the 100 screens of this test
        process included) out of the cyclic collector's reach. A full collection over
        them took 100-230 ms on a loaded 2-core machine, lag that the screens' own
        objects, not the gateway's work, would add to every measurement."""
        gc.collect()
        gc.freeze()

    async def ready(self) -> int:
        assert self.gw is not None
        return (await http_get(self.gw.port, "/readyz"))[0]

    async def recover(self, fault: str) -> None:
        """Undo ``fault``; return once the gateway is connected to the broker again
        and ready (/readyz 200)."""
        assert self.gw is not None and self.gw.mqtt is not None
        await self.heal(fault)
        with trio.fail_after(20):
            while not self.gw.mqtt.connected:
                await trio.sleep(0.02)
        assert await self.ready() == 200

    async def healthy(self) -> bool:
        assert self.gw is not None
        return (await http_get(self.gw.port, "/healthz"))[0] == 200

    # -- faults ----------------------------------------------------------------------------

    async def inject(self, fault: str) -> None:
        """Break the gateway's MQTT connection with ``fault``; return once it is down."""
        broker = self.broker
        assert broker.proc is not None and self.gw is not None and self.gw.mqtt is not None
        if fault in ("sigterm", "sigkill"):
            broker.proc.send_signal(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
            await broker.proc.wait()
        elif fault == "restart":
            await broker.stop()
        elif fault == "sigstop":
            broker.pause()
        elif fault == "reset":
            self.relay.hold = True  # until heal(): long enough for screens to see it
            self.relay.reset_all()
        elif fault == "refuse_bad_credentials":
            await self.set_password("another-password", reload=True)
            await trio.sleep(0.2)  # the broker has re-read its password file
            self.relay.reset_all()
        elif fault == "refuse_max_connections":
            # the broker restarts, and another client takes the gateway listener's only
            # slot before the gateway is let through (a fresh broker counts right:
            # mosquitto 2.0 miscounts a listener's connections after some closes)
            self.relay.hold = True
            await broker.restart()
            self.squatter = await trio.to_thread.run_sync(self._squat)
            self.relay.hold = False
        else:
            raise ValueError(fault)
        with trio.fail_after(10):  # hang detection takes 1.5 keepalives
            while self.gw.mqtt.connected:
                await trio.sleep(0.02)

    async def while_down(self, fault: str) -> None:
        """What the fault looks like once the gateway noticed, until :meth:`heal`."""
        assert self.gw is not None and self.gw.mqtt is not None
        if fault.startswith("refuse_"):
            # refused twice over: the gateway keeps trying and keeps being turned away
            seen = self.relay.accepted
            with trio.fail_after(15):
                while self.relay.accepted < seen + 2:
                    await trio.sleep(0.02)
            assert not self.gw.mqtt.connected
            if fault == "refuse_bad_credentials":  # and says why, between its attempts
                with trio.fail_after(10):
                    while "refused" not in self.gw.mqtt.detail:
                        await trio.sleep(0.01)

    async def heal(self, fault: str) -> None:
        broker = self.broker
        if fault in ("sigterm", "sigkill", "restart"):
            await broker.start()
        elif fault == "sigstop":
            broker.resume()
        elif fault == "reset":
            self.relay.hold = False
        elif fault == "refuse_bad_credentials":
            await self.set_password(GW_PASSWORD, reload=True)
        elif fault == "refuse_max_connections":
            squatter, self.squatter = self.squatter, None
            assert squatter is not None
            await trio.to_thread.run_sync(_close_client, squatter)

    def _squat(self) -> paho.Client:
        """Take the gateway listener's only slot."""
        for _ in range(200):
            c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="squat")
            c.username_pw_set(GW_USER, GW_PASSWORD)
            try:
                c.connect("127.0.0.1", self.gw_port, keepalive=60)
                c.loop_start()
                for _ in range(50):
                    if c.is_connected():
                        return c
                    time.sleep(0.01)
            except OSError:
                pass
            _close_client(c)
        raise RuntimeError("could not take the listener's only connection slot")

    # -- convergence -----------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        assert self.gw is not None
        status, _, body = await http_get(self.gw.port, "/api/snapshot?filter=berlin/line1/%23")
        assert status == 200
        return {
            t: (v["fields"], v["online"], v["stale"])
            for t, v in orjson.loads(body)["topics"].items()
        }

    async def converge(self) -> dict[str, Any]:
        """Wait until every device under the screens' filter said goodbye (the fleet
        was stopped: the data no longer changes) and every screen's mirror equals
        /api/snapshot; return the snapshot."""
        truth: dict[str, Any] = {}
        with trio.fail_after(20):
            while True:
                truth = await self.snapshot()
                if (
                    len(truth) == SCREEN_TOPICS
                    and all(online is False for _, online, _ in truth.values())
                    and all(mirror_view(c) == truth for c in self.screens)
                ):
                    return truth
                await trio.sleep(0.2)

    async def close(self) -> None:
        """Stop everything the rig started, also when the test is being cancelled (a
        dead gateway cancels it): every wait here is bounded."""
        gc.unfreeze()
        with trio.CancelScope(shield=True):
            if self.squatter is not None:
                await trio.to_thread.run_sync(_close_client, self.squatter)
            if self.fleet is not None:
                await stop_process(self.fleet)
            await self.broker.stop()


def mirror_view(c: GatewayClient) -> dict[str, Any]:
    return {t: (m.fields, m.online, m.stale) for t, m in c.mirror.topics.items()}


def _close_client(c: paho.Client) -> None:
    c.disconnect()
    c.loop_stop()
    sock = c.socket()
    if sock is not None:
        sock.close()


def count_tasks() -> int:
    """Every task alive in this trio run."""
    todo = [trio.lowlevel.current_root_task()]
    n = 0
    while todo:
        task = todo.pop()
        n += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return n


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
