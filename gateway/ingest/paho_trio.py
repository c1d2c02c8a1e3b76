"""paho-mqtt 2.x driven natively from Trio: one connection, for subscribers and publishers.

paho's external-loop API is used the way aiomqtt uses it for asyncio, with no second
event loop and no network thread:

* ``client.connect()`` (DNS and the TCP/TLS connect block) runs in a worker thread,
  ``trio.to_thread.run_sync``; everything after it runs on the Trio loop;
* a reader waits with ``trio.lowlevel.wait_readable`` and calls ``loop_read()`` again
  as long as each call delivered a message (paho reads one packet per call, so one
  wake-up drains the socket); for TLS, while the SSL layer holds data;
* a writer waits for paho's "register write" callback (or :meth:`PahoSession.kick`),
  then ``wait_writable`` and ``loop_write()`` until ``want_write()`` is false;
* a watchdog calls ``loop_misc()`` (keepalive pings) and ends a connection that
  received nothing for 1.5 x keepalive (a broker that hangs, a half-open TCP; paho
  alone waits 2 x).

:meth:`PahoSession.run` returns only by raising :class:`MqttFailure` (or being
cancelled); reconnecting is the caller's policy.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = ["BrokerUrl", "MqttFailure", "PahoSession", "first_leaf", "new_client", "parse_url"]


class MqttFailure(Exception):
    """The MQTT connection failed or was lost; the message says why."""


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


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    err: BaseException = group
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    return err


def _close_quietly(sock: Any) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class TrackingContext(ssl.SSLContext):
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


@dataclass(frozen=True)
class TlsOptions:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = False


def new_client(
    broker: BrokerUrl,
    client_id: str,
    protocol: str,
    tls: TlsOptions | None = None,
) -> tuple[paho.Client, TrackingContext | None]:
    v5 = protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    ctx = None
    if broker.tls:
        opts = tls or TlsOptions()
        ctx = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
        if opts.ca_file:
            ctx.load_verify_locations(opts.ca_file)
        else:
            ctx.load_default_certs()
        if opts.cert_file:
            ctx.load_cert_chain(opts.cert_file, opts.key_file or None)
        if opts.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        client.tls_set_context(ctx)
        client.tls_insecure_set(opts.insecure)
    return client, ctx


class PahoSession:
    """One connection of one paho client, driven on the Trio loop."""

    def __init__(
        self,
        client: paho.Client,
        broker: BrokerUrl,
        *,
        protocol: str = "3.1.1",
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        tcp_nodelay: bool = True,
        tls: TrackingContext | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        on_read_burst: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.broker = broker
        self.protocol = protocol
        self.keepalive = max(1, round(keepalive_s))
        self.connect_timeout_s = connect_timeout_s
        self.tcp_nodelay = tcp_nodelay
        self.tls = tls
        self.subscriptions = list(subscriptions)
        self.handler = on_message
        self.on_read_burst = on_read_burst
        self.delivered = 0  # messages handed to the handler
        self.last_rx = 0.0
        self.connected = False
        self._want_write = trio.Event()
        self._writable = trio.Event()
        self._raw = bytearray()  # QoS 0 PUBLISH packets we encoded (publish_qos0)
        self._connack = trio.Event()
        self._connack_error: str | None = None
        self._lost: str | None = None
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_register_write = self._on_register_write
        client.on_socket_close = self._on_socket_close
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._acked = trio.Event()
        #: set when the broker acknowledged the subscriptions (SUBACK): from then on
        #: every matching publish reaches the handler
        self.subscribed = trio.Event()

    async def wait_acked(self, infos: Sequence[paho.MQTTMessageInfo]) -> None:
        """Return once the broker acknowledged these QoS 1/2 publishes."""
        while not all(info.is_published() for info in infos):
            await self._acked.wait()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acked.set()
        self._acked = trio.Event()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self.subscribed.set()

    def kick(self) -> None:
        """Something was queued with the client (a publish): let the writer send it."""
        self._want_write.set()

    def publish_qos0(self, topic: str, payload: bytes) -> None:
        """Queue a QoS 0 PUBLISH encoded here, not by paho.

        paho's publish() costs a threading.Condition, an MQTT 5 Properties object and a
        send() per message; a QoS 0 PUBLISH carries no protocol state, so we encode it
        and write a whole batch with one send(). The writer interleaves these bytes
        with paho's own packets only at packet boundaries (see _writer).
        """
        t = topic.encode("utf-8")
        head = len(t).to_bytes(2, "big") + t + (b"\x00" if self.protocol == "5" else b"")
        size = len(head) + len(payload)
        raw = self._raw
        raw.append(0x30)
        while True:  # "remaining length": 7 bits per byte, high bit = more
            byte = size & 0x7F
            size >>= 7
            raw.append(byte | 0x80 if size else byte)
            if not size:
                break
        raw += head
        raw += payload

    async def wait_sent(self) -> None:
        """Return once nothing is left to write (publisher backpressure)."""
        while self.client.want_write() or self._raw:
            self.kick()
            await self._writable.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = self.client
        b = self.broker
        kwargs: dict[str, Any] = {"clean_start": True} if self.protocol == "5" else {}
        # The blocking connect runs in a thread we may abandon (on timeout or shutdown).
        # Whichever comes second, the thread finishing or us giving up on it, closes
        # the socket, so an abandoned connect never leaks one.
        lock = threading.Lock()
        abandoned = False

        def connect() -> None:
            try:
                client.connect(b.host, b.port, self.keepalive, **kwargs)
            except BaseException:
                if self.tls is not None:  # paho leaves the SSL socket open on failure
                    self.tls.close_created()
                raise
            finally:
                with lock:
                    if abandoned:
                        _close_quietly(client.socket())

        try:
            with trio.fail_after(self.connect_timeout_s):
                await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except BaseException as err:
            with lock:
                abandoned = True
                _close_quietly(client.socket())
            if isinstance(err, trio.TooSlowError):
                raise MqttFailure(f"connect timed out after {self.connect_timeout_s} s") from None
            raise
        sock = client.socket()
        if sock is None:
            raise MqttFailure("paho returned no socket after connect")
        if isinstance(sock, socket.socket):  # SSLSocket is one too
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.tcp_nodelay))
        self.last_rx = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, sock)
                nursery.start_soon(self._writer, sock)
                nursery.start_soon(self._watchdog)
                self._want_write.set()  # the CONNECT packet is queued
                with trio.fail_after(self.connect_timeout_s):
                    try:
                        await self._connack.wait()
                    except trio.TooSlowError:
                        raise MqttFailure("no CONNACK from the broker in time") from None
                if self._connack_error:
                    raise MqttFailure(f"broker refused the connection: {self._connack_error}")
                self.connected = True
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.connected = False
            if sock.fileno() != -1:
                trio.lowlevel.notify_closing(sock)
                sock.close()

    def _reason(self, default: str) -> str:
        """Why the connection ended: a broker's refusal says more than the closed
        socket that follows it, and that more than paho's return code."""
        if self._connack_error:
            return f"broker refused the connection: {self._connack_error}"
        return self._lost or default

    def disconnect(self) -> None:
        """Say goodbye (DISCONNECT: no last will); ``run`` then ends with MqttFailure."""
        self._lost = "disconnected by us"
        if self.connected:
            self.client.disconnect()
            self.kick()

    async def _wait(self, wait: Callable[[Any], Any], sock: Any) -> None:
        # paho closes its socket itself (on errors, or after DISCONNECT): the wait
        # then ends with ClosedResourceError, which is the end of this connection
        try:
            await wait(sock)
        except trio.ClosedResourceError:
            raise MqttFailure(self._reason("socket closed")) from None

    async def _reader(self, sock: Any) -> None:
        client = self.client
        while True:
            await self._wait(trio.lowlevel.wait_readable, sock)
            self.last_rx = trio.current_time()
            if self.on_read_burst is not None:
                self.on_read_burst()
            while True:
                before = self.delivered
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise MqttFailure(self._reason(f"connection lost ({paho.error_string(rc)})"))
                if client.want_write():
                    self._want_write.set()
                if self.delivered == before and not (
                    isinstance(sock, ssl.SSLSocket) and sock.pending()
                ):
                    break  # the last call delivered nothing: back to waiting

    async def _writer(self, sock: Any) -> None:
        # Packets never interleave: our raw bytes are written only while paho's queue
        # is empty (so it has no half-written packet), and paho writes (loop_write)
        # only while no raw bytes are pending (so we have none).
        client = self.client
        raw = self._raw
        while True:
            await self._want_write.wait()
            self._want_write = trio.Event()
            while client.want_write() or raw:
                await self._wait(trio.lowlevel.wait_writable, sock)
                if raw and not client.want_write():
                    try:
                        sent = sock.send(raw)
                    except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                        sent = 0
                    except OSError as err:
                        raise MqttFailure(self._reason(f"write failed ({err})")) from None
                    del raw[:sent]
                    continue
                rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise MqttFailure(self._reason(f"write failed ({paho.error_string(rc)})"))
            self._writable.set()
            self._writable = trio.Event()

    async def _watchdog(self) -> None:
        limit = 1.5 * self.keepalive
        client = self.client
        while True:
            await trio.sleep(min(0.5, self.keepalive / 4))
            rc = client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttFailure(self._reason(f"keepalive failed ({paho.error_string(rc)})"))
            if client.want_write():
                self._want_write.set()
            silent = trio.current_time() - self.last_rx
            if silent > limit:
                raise MqttFailure(f"nothing received for {silent:.1f} s (1.5 x keepalive)")

    # -- paho callbacks (run synchronously inside loop_read/loop_write) -------------------

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
        elif self.subscriptions:
            client.subscribe(self.subscriptions)
            self._want_write.set()
        self._connack.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._lost = f"disconnected by the broker or the network ({reason})"

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.delivered += 1
        if self.handler is not None:
            self.handler(msg)
