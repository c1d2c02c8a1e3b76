"""The MQTT transport: the fleet publishes to a broker through paho driven by Trio.

Two modes:

* one connection per device (``connections=0``): each device's client sets a last
  will ``status/<path>`` = ``offline`` (retained, QoS 1) and publishes ``online``
  (retained) once connected; a crashed or killed simulator shows every device
  offline;
* ``connections=N`` shared connections for large fleets: device ``i`` publishes on
  connection ``i % N``; statuses are still retained per device, but a last will can
  only cover a connection. It goes to ``devices-sim/<client id>/connection``, outside
  the gateway's ``status/#`` and ``telemetry/#``: a connection is not a device and must
  not appear as one. A crash shows there (``mosquitto_sub -t 'devices-sim/#'``).

Failures are reported as they are: a device counts as online only while its
connection is up, every failed connection attempt is counted (``connect_failures``,
with the last reason in ``last_error``), and :meth:`MqttPublisher.run` raises
:class:`ConnectError` when the connections are not all up within ``connect_timeout_s``.

Data goes to ``telemetry/<path>`` as JSON (the fields and ``ts``). After each step
the publisher waits until paho has written everything it queued, so memory stays
bounded; if the broker is slower than the requested rate, the achieved rate drops
and the status line shows it. A clean stop publishes every device ``offline``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

import orjson
import paho.mqtt.client as paho
import trio

from gateway.backoff import Backoff
from gateway.ingest.paho_trio import BrokerUrl, MqttFailure, PahoSession, first_leaf, new_client

from .fleet import Fleet, Message

__all__ = ["ConnectError", "MqttPublisher", "PublishStats"]

log = logging.getLogger("devices_sim.mqtt")
STEP_S = 0.01
#: reconnect waits (gateway/backoff.py): random(base, min(cap, base * 2**n)) after the
#: n-th failure in a row; a connection up STABLE_S starts the count afresh (a broker
#: that accepts and then drops each connection at once, an ACL or a duplicate client
#: id, gets backed-off attempts, not one per connection every second)
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
STABLE_S = 10.0
MAX_CATCH_UP_S = 0.1


@dataclass
class PublishStats:
    published: int = 0
    errors: int = 0
    connected: int = 0
    reconnects: int = 0
    lag_s: float = 0.0  # how far publishing runs behind the schedule
    by_kind: dict[str, int] = field(default_factory=dict)
    connect_failures: int = 0  # connection attempts that failed, and connections lost
    last_error: str = ""


class ConnectError(Exception):
    """The broker did not accept every connection in time; the message says why."""


class _Conn:
    def __init__(self, name: str, will_topic: str | None) -> None:
        self.name = name
        self.will_topic = will_topic
        self.session: PahoSession | None = None
        self.ready = trio.Event()
        self.scope = trio.CancelScope(shield=True)  # cancelled by MqttPublisher.run


class MqttPublisher:
    def __init__(
        self,
        fleet: Fleet,
        broker: BrokerUrl,
        *,
        connections: int = 4,
        qos: int = 0,
        protocol: str = "3.1.1",
        client_prefix: str = "sim",
        keepalive_s: float = 30.0,
        offline_on_exit: bool = True,
        connect_timeout_s: float = 60.0,
    ) -> None:
        self.fleet = fleet
        self.broker = broker
        self.qos = qos
        self.protocol = protocol
        self.keepalive_s = keepalive_s
        self.offline_on_exit = offline_on_exit
        self.connect_timeout_s = connect_timeout_s
        self.stats = PublishStats()
        self._stopping = False
        self.publishing = False  # connected and publishing: stop() says goodbye
        self.stop_requested = False
        self.per_device = connections == 0
        if self.per_device:
            self.conns = [
                _Conn(f"{client_prefix}-{d.index:05d}", f"status/{d.path}") for d in fleet.devices
            ]
        else:
            self.conns = [
                _Conn(f"{client_prefix}-c{i}", f"devices-sim/{client_prefix}-c{i}/connection")
                for i in range(connections)
            ]

    def conn_for(self, path: str) -> _Conn:
        index = self.fleet.by_path[path].index
        return self.conns[index if self.per_device else index % len(self.conns)]

    def online(self) -> int:
        """Devices online as the broker sees them: online, and their connection up."""
        up = [c.session is not None and c.session.connected for c in self.conns]
        n = len(self.conns)
        return sum(
            d.online and up[d.index if self.per_device else d.index % n] for d in self.fleet.devices
        )

    async def run(
        self,
        duration_s: float | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            for conn in self.conns:
                nursery.start_soon(self._keep_connected, conn)
            try:
                await self._run(duration_s, task_status)
            finally:
                # the connections outlive a cancelled run() until here (their scopes
                # are shielded), so that a stopped simulator still says goodbye
                for conn in self.conns:
                    conn.scope.cancel()
                nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """End the run as if its duration were over: every device still says goodbye
        (``offline``), which cancelling the run cannot do (its connections go too)."""
        self.stop_requested = True

    async def _run(self, duration_s: float | None, task_status: trio.TaskStatus[None]) -> None:
        with trio.move_on_after(self.connect_timeout_s):
            for conn in self.conns:
                await conn.ready.wait()
        missing = sum(not c.ready.is_set() for c in self.conns)
        if missing:
            raise ConnectError(
                f"{missing} of {len(self.conns)} connections to {self.broker} not up "
                f"after {self.connect_timeout_s:g} s: {self.stats.last_error or 'no answer'}"
            )
        self._publish(self._initial_statuses())
        task_status.started()
        self.publishing = True
        t0 = trio.current_time()
        # Simulated time starts now, not when the fleet was built: connecting
        # thousands of devices takes a while, and every timestamp would carry
        # that delay as data age.
        self.fleet.start_wall = time.time()
        n = 0
        sim_now = 0.0
        try:
            while not self.stop_requested and (
                duration_s is None or trio.current_time() - t0 < duration_s
            ):
                n += 1
                await trio.sleep_until(t0 + n * STEP_S)
                now = trio.current_time() - t0
                # Simulated time advances at most MAX_CATCH_UP_S per step: when the
                # broker (or this process) cannot keep the requested rate, the fleet
                # falls behind (stats.lag_s) instead of building an ever larger burst.
                sim_now = min(now, sim_now + MAX_CATCH_UP_S)
                msgs = self.fleet.step(sim_now)
                touched = self._publish(msgs)
                for conn in touched:
                    if conn.session is not None:
                        await conn.session.wait_sent()
                self.stats.lag_s = max(0.0, trio.current_time() - t0 - sim_now)
        finally:
            if self.offline_on_exit:
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    await self._say_goodbye()

    async def _say_goodbye(self) -> None:
        # Disconnect only once the broker acknowledged the goodbyes (QoS 1): closing
        # with its PUBACKs unread makes the kernel reset the connection and drop what
        # it had not sent yet. A connection that is down (a broker fault) loses its
        # goodbyes; its last will says "offline" instead.
        goodbyes: dict[_Conn, list[paho.MQTTMessageInfo]] = {}
        for m in self.fleet.final():  # all in flight at once...
            conn = self.conn_for(m.path)
            self._publish([m], goodbyes.setdefault(conn, []))
        for conn, acks in goodbyes.items():  # ...then each acknowledged
            session = conn.session
            if session is not None:
                await session.wait_sent()
                await session.wait_acked(acks)
        self._stopping = True
        for conn in self.conns:
            if conn.session is not None:
                conn.session.disconnect()
        await trio.sleep(0.1)  # let the DISCONNECT packets go out

    def _initial_statuses(self) -> list[Message]:
        msgs = self.fleet.initial()
        if self.per_device:
            return []  # each device announced itself when its connection came up
        return msgs

    def _publish(
        self, msgs: list[Message], acks: list[paho.MQTTMessageInfo] | None = None
    ) -> set[_Conn]:
        touched: set[_Conn] = set()
        stats = self.stats
        for m in msgs:
            conn = self.conn_for(m.path)
            session = conn.session
            if session is None or not session.connected:
                stats.errors += 1
                continue
            if m.kind == "data":
                assert m.fields is not None
                payload = orjson.dumps({**m.fields, "ts": m.ts})
                if self.qos == 0:
                    session.publish_qos0(f"telemetry/{m.path}", payload)
                    stats.published += 1
                    stats.by_kind["data"] = stats.by_kind.get("data", 0) + 1
                    touched.add(conn)
                    continue
                info = session.client.publish(f"telemetry/{m.path}", payload, qos=self.qos)
            else:
                info = session.client.publish(
                    f"status/{m.path}", b"online" if m.online else b"offline", qos=1, retain=True
                )
            if info.rc != 0:
                stats.errors += 1
                continue
            stats.published += 1
            stats.by_kind[m.kind] = stats.by_kind.get(m.kind, 0) + 1
            if acks is not None:
                acks.append(info)
            touched.add(conn)
        return touched

    async def _keep_connected(self, conn: _Conn) -> None:
        with conn.scope:
            await self._reconnect_loop(conn)

    async def _reconnect_loop(self, conn: _Conn) -> None:
        backoff = Backoff(BACKOFF_BASE_S, BACKOFF_CAP_S, STABLE_S, random.Random(conn.name))
        while True:
            client, tls = new_client(self.broker, conn.name, self.protocol)
            if conn.will_topic:
                client.will_set(conn.will_topic, b"offline", qos=1, retain=True)
            session = PahoSession(
                client,
                self.broker,
                protocol=self.protocol,
                keepalive_s=self.keepalive_s,
                tcp_nodelay=False,
                tls=tls,
            )
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.run)
                    conn.session = session
                    self.stats.connected += 1
                    if self.per_device and conn.will_topic:
                        client.publish(conn.will_topic, b"online", qos=1, retain=True)
                        session.kick()
                    conn.ready.set()
                    backoff.up()
            except* (MqttFailure, OSError) as group:
                if not self._stopping:
                    self.stats.connect_failures += 1
                    self.stats.last_error = str(first_leaf(group))
                    log.warning("MQTT connection %s: %s", conn.name, first_leaf(group))
            finally:
                if conn.session is session:
                    conn.session = None
                    self.stats.connected -= 1
            if self._stopping:
                return
            self.stats.reconnects += 1
            delay = backoff.next_delay()
            log.debug(
                "MQTT connection %s: reconnecting in %.2f s (attempt %d)",
                conn.name,
                delay,
                backoff.failures,
            )
            await trio.sleep(delay)
