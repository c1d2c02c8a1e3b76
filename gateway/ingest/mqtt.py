"""MQTT ingest: paho-mqtt 2.x driven natively from Trio.

paho's external-loop API is used the way aiomqtt uses it for asyncio, with no
second event loop and no network thread:

* ``client.connect()`` (DNS and the TCP connect block) runs in a worker thread,
  ``trio.to_thread.run_sync``; everything after it runs on the Trio loop;
* a reader waits with ``trio.lowlevel.wait_readable`` and calls ``loop_read()``
  again as long as each call delivered a message (paho reads one packet per call,
  so one wake-up drains the socket); for TLS, while the SSL layer holds data;
* a writer waits for paho's "register write" callback, then ``wait_writable`` and
  ``loop_write()`` until ``want_write()`` is false;
* a watchdog calls ``loop_misc()`` (keepalive pings) and drops a connection that
  received nothing for 1.5 x keepalive (a broker that hangs, a half-open TCP).

Messages go straight into the state store from the reader: the ingest never waits
on subscribers. Failures reconnect with exponential backoff and full jitter
(``reconnect_min_s`` up to ``reconnect_max_s``, the attempt count reset after
``stable_s`` connected), re-subscribing each time; meanwhile the last state is
served, marked stale, and ``/readyz`` says not ready.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import secrets
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..clock import Clock
from ..config import MqttConfig
from ..core.state import InvalidUpdate, StateStore
from ..log import RateLimitedLog
from .codec import IngestError, Router, decode_data, decode_status

__all__ = ["IngestStats", "MqttIngest", "parse_url"]

log = logging.getLogger("gateway.mqtt")


class MqttFailure(Exception):
    """The MQTT connection failed or was lost; the message says why."""


@dataclass
class IngestStats:
    messages: collections.Counter[str] = field(default_factory=collections.Counter)  # by source
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    connects: int = 0
    reconnects: int = 0
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(frozen=True)
class BrokerUrl:
    tls: bool
    host: str
    port: int
    username: str | None
    password: str | None

    def __str__(self) -> str:  # never shows the password
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_url(url: str) -> BrokerUrl:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"expected mqtt://[user:pass@]host[:port] or mqtts://..., got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port in {url!r} is not a number from 0 to 65535") from None
    tls = parts.scheme == "mqtts"
    return BrokerUrl(
        tls,
        parts.hostname,
        port or (8883 if tls else 1883),
        urllib.parse.unquote(parts.username) if parts.username else None,
        urllib.parse.unquote(parts.password) if parts.password else None,
    )


class _TrackingContext(ssl.SSLContext):
    """An SSL context that remembers the sockets it wrapped, so that a failed TLS
    handshake inside paho's connect() (which does not close its socket) can be
    cleaned up by us."""

    created: list[ssl.SSLSocket]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        if not hasattr(self, "created"):
            self.created = []
        self.created = [*[s for s in self.created if s.fileno() != -1][-4:], sock]
        return sock

    def close_created(self) -> None:
        for sock in getattr(self, "created", []):
            _close_quietly(sock)
        self.created = []


def _tls_context(cfg: MqttConfig) -> _TrackingContext:
    ctx = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    if cfg.tls_ca_file:
        ctx.load_verify_locations(cfg.tls_ca_file)
    else:
        ctx.load_default_certs()
    if cfg.tls_cert_file:
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file or None)
    if cfg.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _close_quietly(sock: Any) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    err: BaseException = group
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    return err


class MqttIngest:
    def __init__(
        self,
        cfg: MqttConfig,
        store: StateStore,
        clock: Clock,
        max_topic_bytes: int,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.broker = parse_url(cfg.url)
        self.store = store
        self.clock = clock
        self.router = Router(cfg.routes, max_topic_bytes)
        self.stats = IngestStats()
        self.connected = False
        self.detail = "not connected yet"
        self.rng = rng or random.Random()
        self.client_id = cfg.client_id or f"gateway-{secrets.token_hex(4)}"
        self._log = RateLimitedLog(log)
        self._client: paho.Client | None = None
        self._tls: _TrackingContext | None = None
        self._delivered = 0  # messages paho handed us (counted into stats per read burst)
        self._now = clock.wall()  # the receive time of the current read burst
        self._last_rx = 0.0
        self._want_write = trio.Event()
        self._connack = trio.Event()
        self._connack_error: str | None = None
        self._lost: str | None = None

    def ready(self) -> tuple[bool, str]:
        return self.connected, self.detail

    # -- the reconnect loop -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        first = True
        while True:
            began = trio.current_time()
            try:
                await self._session()
            except* (MqttFailure, OSError, ssl.SSLError) as group:
                err = _first_leaf(group)
                reason = str(err) or type(err).__name__
                self.detail = f"disconnected: {reason}"
                self._log.limited("mqtt", "MQTT %s: %s", self.broker, reason)
            finally:
                if self.connected:
                    self.stats.disconnects["lost"] += 1
                self.connected = False
                self._client = None
            stale = self.store.mark_all_stale(self.clock.wall())
            if stale:
                log.info("MQTT down: %d topics marked stale until their devices report", stale)
            if trio.current_time() - began >= self.cfg.stable_s:
                attempt = 0
            cap = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2**attempt)
            delay = self.rng.uniform(self.cfg.reconnect_min_s, max(cap, self.cfg.reconnect_min_s))
            attempt += 1
            if not first:
                self.stats.reconnects += 1
            first = False
            log.info("MQTT: reconnecting to %s in %.1f s", self.broker, delay)
            await trio.sleep(delay)

    def _new_client(self) -> paho.Client:
        v5 = self.cfg.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else True,
        )
        b = self.broker
        if b.username:
            client.username_pw_set(b.username, b.password)
        if b.tls:
            self._tls = _tls_context(self.cfg)
            client.tls_set_context(self._tls)
            client.tls_insecure_set(self.cfg.tls_insecure)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_register_write = self._on_register_write
        client.on_socket_close = self._on_socket_close
        return client

    async def _session(self) -> None:
        client = self._new_client()
        self._client = client
        self._connack = trio.Event()
        self._connack_error = None
        self._lost = None
        b = self.broker
        keepalive = max(1, round(self.cfg.keepalive_s))
        self.detail = f"connecting to {b}"
        kwargs: dict[str, Any] = {"clean_start": True} if self.cfg.protocol == "5" else {}
        # The blocking connect runs in a thread we may abandon (on timeout or shutdown).
        # Whichever comes second, the thread finishing or us giving up on it, closes
        # the socket, so an abandoned connect never leaks one.
        lock = threading.Lock()
        abandoned = False

        def connect() -> None:
            try:
                client.connect(b.host, b.port, keepalive, **kwargs)
            except BaseException:
                # paho leaves the SSL socket open when the TLS handshake fails
                if self._tls is not None:
                    self._tls.close_created()
                raise
            finally:
                with lock:
                    if abandoned:
                        _close_quietly(client.socket())

        try:
            with trio.fail_after(self.cfg.connect_timeout_s):
                await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except BaseException as err:
            with lock:
                abandoned = True
                _close_quietly(client.socket())
            if isinstance(err, trio.TooSlowError):
                raise MqttFailure(
                    f"connect timed out after {self.cfg.connect_timeout_s} s"
                ) from None
            raise
        sock = client.socket()
        if sock is None:
            raise MqttFailure("paho returned no socket after connect")
        if self.cfg.tcp_nodelay and isinstance(sock, socket.socket):  # SSLSocket is one too
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._last_rx = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, client, sock)
                nursery.start_soon(self._writer, client, sock)
                nursery.start_soon(self._watchdog, client, keepalive)
                self._want_write.set()  # the CONNECT packet is queued
                with trio.fail_after(self.cfg.connect_timeout_s):
                    try:
                        await self._connack.wait()
                    except trio.TooSlowError:
                        raise MqttFailure("no CONNACK from the broker in time") from None
                if self._connack_error:
                    raise MqttFailure(f"broker refused the connection: {self._connack_error}")
                self.connected = True
                self.stats.connects += 1
                self.detail = f"connected to {b}"
                log.info("MQTT: connected to %s as %s", b, self.client_id)
                await trio.sleep_forever()
        finally:
            if sock.fileno() != -1:
                trio.lowlevel.notify_closing(sock)
                sock.close()

    # -- socket tasks --------------------------------------------------------------------

    async def _reader(self, client: paho.Client, sock: Any) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            self._last_rx = trio.current_time()
            # one receive time per wake-up: the messages of one read burst arrived
            # within microseconds of each other, and the clock read is per-message cost
            self._now = self.clock.wall()
            start = self._delivered
            while True:
                before = self._delivered
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise MqttFailure(self._reason(f"connection lost ({paho.error_string(rc)})"))
                if client.want_write():
                    self._want_write.set()
                if self._delivered == before and not (
                    isinstance(sock, ssl.SSLSocket) and sock.pending()
                ):
                    break  # the last call delivered nothing: back to waiting
            self.stats.messages["mqtt"] += self._delivered - start

    async def _writer(self, client: paho.Client, sock: Any) -> None:
        while True:
            await self._want_write.wait()
            self._want_write = trio.Event()
            while client.want_write():
                await trio.lowlevel.wait_writable(sock)
                rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise MqttFailure(self._reason(f"write failed ({paho.error_string(rc)})"))

    async def _watchdog(self, client: paho.Client, keepalive: int) -> None:
        limit = 1.5 * keepalive
        while True:
            await trio.sleep(min(0.5, keepalive / 4))
            rc = client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttFailure(self._reason(f"keepalive failed ({paho.error_string(rc)})"))
            if client.want_write():
                self._want_write.set()
            silent = trio.current_time() - self._last_rx
            if silent > limit:
                self.stats.disconnects["keepalive"] += 1
                raise MqttFailure(f"nothing received for {silent:.1f} s (1.5 x keepalive)")

    def _reason(self, default: str) -> str:
        """Why the connection ended: a broker's refusal says more than the closed
        socket that follows it, and that more than paho's return code."""
        if self._connack_error:
            return f"broker refused the connection: {self._connack_error}"
        return self._lost or default

    # -- paho callbacks (run synchronously inside loop_read/loop_write) ----------------------

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._want_write.set()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho closes its socket itself on errors: Trio must hear of it first, since
        # our reader and writer may be waiting on that fd
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._connack_error = str(reason)
        else:
            subs = [(f, q) for f, q in self.cfg.subscriptions]
            client.subscribe(subs)
            self._want_write.set()
        self._connack.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._lost = f"disconnected by the broker or the network ({reason})"

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # paho re-raises callback exceptions out of loop_read(): nothing may escape here
        self._delivered += 1
        try:
            payload = msg.payload
            self.handle(msg.topic, payload if type(payload) is bytes else bytes(payload))
        except UnicodeDecodeError:
            self.stats.rejected["bad_topic"] += 1
        except Exception:
            self.stats.rejected["internal_error"] += 1
            log.exception("MQTT message handler failed (the ingest goes on)")

    def handle(self, mqtt_topic: str, payload: bytes) -> None:
        """One MQTT message into the store; refusals are counted and logged, never raised."""
        stats = self.stats
        now = self._now
        try:
            route, topic = self.router.route(mqtt_topic)
            if route.kind == "status":
                online = decode_status(payload)
                if online is not None:
                    self.store.set_presence(topic, online, now)
                return
            update = decode_data(payload, route, self.cfg.max_payload_bytes)
            self.store.apply(
                topic, update.fields, now, device_ts=update.device_ts, mode=update.mode
            )
        except IngestError as err:
            stats.rejected[err.reason] += 1
            self._log.limited(
                f"reject:{err.reason}", "MQTT message on %r refused: %s", mqtt_topic[:200], err
            )
        except InvalidUpdate as err:
            stats.rejected[err.reason] += 1
            self._log.limited(
                f"reject:{err.reason}", "MQTT message on %r refused: %s", mqtt_topic[:200], err
            )
