"""paho-mqtt 2.x driven natively from Trio: one connection, for subscribers and publishers.

paho's external-loop API is used the way aiomqtt uses it for asyncio, with no second
event loop and no network thread:

* ``client.connect()`` (DNS and the TCP/TLS connect block) runs in a worker thread,
  ``trio.to_thread.run_sync``; everything after it runs on the Trio loop;
* a reader waits with ``trio.lowlevel.wait_readable``, reads the socket itself (one
  ``recv`` of up to 64 KiB at a time; for TLS, also what the SSL layer holds) and cuts
  the bytes into packets with :class:`gateway.ingest.mqttwire.Splitter`. A QoS 0
  PUBLISH goes straight to the handler as ``(topic, payload)``: it has no protocol
  state, and paho's per-packet machinery (a ``recv(1)`` per header byte, a message
  object with a ``threading.Condition``, topic matching) cost more than our whole
  handler. Every other packet is handed to paho unchanged: the client is a
  :class:`TrioClient`, whose ``_sock_recv`` serves paho from our buffer, and
  ``loop_read()`` handles it (CONNACK, SUBACK, PINGRESP, QoS 1/2 with their acks,
  DISCONNECT): paho still owns the protocol. A PUBLISH whose payload is over
  ``max_payload_bytes`` is dropped as it streams in (``on_too_large``; acknowledged
  if QoS 1/2); broken framing ends the connection. The work per turn is bounded:
  after ``read_batch`` packets or ``read_budget_s`` seconds the reader yields
  (``trio.lowlevel.checkpoint()``) and then goes on, so a flood of messages cannot
  starve the rest of the loop;
* a writer waits for paho's "register write" callback (or :meth:`PahoSession.kick`),
  then ``wait_writable`` and ``loop_write()`` until ``want_write()`` is false;
* a watchdog calls ``loop_misc()`` (keepalive pings) and ends a connection that
  received nothing for 1.5 x keepalive (a broker that hangs, a half-open TCP; paho
  alone waits 2 x).

The broker URL, the TLS context and the paho client object come from
:mod:`gateway.ingest.paho_client` (re-exported here).

:meth:`PahoSession.run` returns only by raising :class:`MqttFailure` (or being
cancelled), whatever the broker or the network does; reconnecting is the caller's
policy. The rules that make this so:

* paho closes its socket itself (a read or write error, a keepalive timeout, after
  our DISCONNECT), sometimes while another of our tasks is about to wait on it. Every
  wait first checks that the socket is still open and still paho's; a closed one ends
  the connection (Trio cannot wait on fd -1, and must never wait on a number the
  kernel may already have given to another socket);
* paho calls ``on_socket_close`` before it closes; we call ``notify_closing`` there,
  so Trio forgets the fd before the kernel can reuse it;
* the end of the stream and a read error reach paho the way its own read would have
  met them (its source returns b"" or raises the OSError), so paho closes the socket
  and says why, as before;
* the blocking connect runs in a worker thread with no Trio callbacks installed
  (paho calls them from whatever thread it runs in); they are installed on the Trio
  thread once connect() returned, and the writer then sends the queued CONNECT;
* any exception out of paho's connect, ``loop_read``, ``loop_write`` or ``loop_misc``
  (OSError, SSL errors, a ValueError from a bad host name or certificate, a bug in a
  packet decoder) becomes MqttFailure with the reason.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import MQTTErrorCode

from .mqttwire import MalformedPacket, Packet, Retained, Splitter, TooLarge
from .paho_client import (
    BrokerUrl,
    TlsOptions,
    TrackingContext,
    TrioClient,
    close_quietly,
    new_client,
    parse_url,
)

__all__ = [
    "BrokerUrl",
    "MqttFailure",
    "OnMessage",
    "PahoSession",
    "TlsOptions",
    "TrioClient",
    "first_leaf",
    "new_client",
    "parse_url",
]


class OnMessage(Protocol):
    """What a PUBLISH is handed to: its topic (None if not UTF-8) and payload, and
    ``True`` for ``retained`` when the broker sent it from its store because we
    subscribed (RETAIN set: old news of unknown age; a live one has it unset)."""

    def __call__(self, topic: str | None, payload: bytes, retained: bool = False) -> None: ...


class MqttFailure(Exception):
    """The MQTT connection failed or was lost; the message says why."""


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    err: BaseException = group
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    return err


_OK = MQTTErrorCode.MQTT_ERR_SUCCESS


def _why(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _is(a: object, b: object) -> bool:  # identity, without narrowing b's type for mypy
    return a is b


def _queue_only(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's register-write callback while connect() runs in the worker thread: with a
    callback installed, paho only queues the CONNECT packet (without one it would
    write it from that thread); the writer sends it once run() is back on Trio."""


class PahoSession:
    """One connection of one paho client, driven on the Trio loop."""

    #: the reader yields after this many packets or this long, whichever comes first
    READ_BATCH = 128
    READ_BUDGET_S = 0.001  # the loop-lag budget is p99 <= 10 ms (serve/fanout.py SLICE_S)
    #: after a read that drained the socket, this long before the next wait (0: none)
    READ_GATHER_S = 0.0
    #: bytes asked of the socket per recv()
    RECV_BYTES = 65_536
    #: the largest payload a session takes when its owner names none
    MAX_PAYLOAD = 1 << 20

    def __init__(
        self,
        client: TrioClient,
        broker: BrokerUrl,
        *,
        protocol: str = "3.1.1",
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        tcp_nodelay: bool = True,
        tls: TrackingContext | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: OnMessage | None = None,
        on_read_burst: Callable[[], None] | None = None,
        on_too_large: Callable[[str | None, int], None] | None = None,
        read_batch: int = READ_BATCH,
        read_budget_s: float = READ_BUDGET_S,
        read_gather_s: float = READ_GATHER_S,
        max_payload_bytes: int = MAX_PAYLOAD,
    ) -> None:
        if not isinstance(client, TrioClient):
            raise TypeError("PahoSession needs a TrioClient (new_client() makes one)")
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
        self.on_too_large = on_too_large
        self.max_payload_bytes = max_payload_bytes
        self.read_batch = max(1, read_batch)
        self.read_budget_s = read_budget_s
        self.read_gather_s = read_gather_s
        self.delivered = 0  # messages handed to the handler
        self.yields = 0  # times the reader stopped a turn on its budget with data left
        self.last_rx = 0.0
        self.connected = False
        self.closed = False  # run() has ended: nothing more is written or acknowledged
        self._want_write = trio.Event()
        self._writable = trio.Event()
        self._raw = bytearray()  # QoS 0 PUBLISH packets we encoded (publish_qos0)
        self._connack = trio.Event()
        self._connack_error: str | None = None
        self._lost: str | None = None
        self._acked = trio.Event()
        # the read side: bytes from the socket, cut into packets; paho reads the
        # packets it handles from _for_paho (TrioClient.source)
        self._splitter = Splitter(v5=protocol == "5", max_payload=max_payload_bytes)
        self._for_paho = b""
        self._paho_at = 0  # how much of _for_paho paho has read
        self._eof = False
        self._rx_error: OSError | None = None
        client.on_socket_register_write = _queue_only

    def _install_callbacks(self) -> None:
        # on the Trio thread, after connect(): they set Trio events and notify Trio
        client = self.client
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_register_write = self._on_register_write
        client.on_socket_close = self._on_socket_close
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.source = self._paho_recv
        self._acked = trio.Event()
        #: set when the broker acknowledged the subscriptions (SUBACK): from then on
        #: every matching publish reaches the handler
        self.subscribed = trio.Event()
        #: the topic filters the broker refused in its SUBACK (an ACL, a bad filter)
        self.refused: list[str] = []

    async def wait_acked(self, infos: Sequence[paho.MQTTMessageInfo]) -> None:
        """Return once the broker acknowledged these QoS 1/2 publishes, or the
        connection ended (then some may never be)."""
        while not self.closed and not all(info.is_published() for info in infos):
            await self._acked.wait()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acked.set()
        self._acked = trio.Event()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self.refused = [
            topic
            for (topic, _), reason in zip(self.subscriptions, reasons or (), strict=False)
            if getattr(reason, "is_failure", False)
        ]
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
        """Return once nothing is left to write (publisher backpressure), or the
        connection ended (what was queued is then lost with it)."""
        while (self.client.want_write() or self._raw) and not self.closed:
            self.kick()
            await self._writable.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            sock = await self._connect()
            try:
                await self._serve(sock, task_status)
            finally:
                self.connected = False
                if sock.fileno() != -1:
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
        finally:
            self.closed = True
            self._writable.set()  # wake wait_sent() and wait_acked() for good
            self._acked.set()

    async def _connect(self) -> Any:
        client = self.client
        b = self.broker
        kwargs: dict[str, Any] = {"clean_start": True} if self.protocol == "5" else {}
        # The blocking connect runs in a thread we may abandon (on timeout or shutdown).
        # Whichever comes second, the thread finishing or us giving up on it, closes
        # the socket, so an abandoned connect never leaks one.
        lock = threading.Lock()
        abandoned = False

        def connect() -> MQTTErrorCode:
            try:
                return client.connect(b.host, b.port, self.keepalive, **kwargs)
            except BaseException:
                if self.tls is not None:  # paho leaves the SSL socket open on failure
                    self.tls.close_created()
                raise
            finally:
                with lock:
                    if abandoned:
                        close_quietly(client.socket())

        try:
            with trio.fail_after(self.connect_timeout_s):
                rc = await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except BaseException as err:
            with lock:
                abandoned = True
                close_quietly(client.socket())
            if isinstance(err, trio.TooSlowError):
                raise MqttFailure(f"connect timed out after {self.connect_timeout_s} s") from None
            if isinstance(err, Exception):  # OSError, SSLError, ValueError (host, certificate)
                raise MqttFailure(f"connect failed ({_why(err)})") from err
            raise
        sock = client.socket()
        if rc != _OK or sock is None or sock.fileno() == -1:
            close_quietly(sock)
            raise MqttFailure(f"connect failed ({paho.error_string(rc)})")
        self._install_callbacks()
        if isinstance(sock, socket.socket):  # SSLSocket is one too
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.tcp_nodelay))
            except OSError as err:  # already reset by the peer
                sock.close()
                raise MqttFailure(f"connect failed ({_why(err)})") from None
        return sock

    async def _serve(self, sock: Any, task_status: trio.TaskStatus[None]) -> None:
        self.last_rx = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, sock)
            nursery.start_soon(self._writer, sock)
            nursery.start_soon(self._watchdog, sock)
            self._want_write.set()  # the CONNECT packet is queued
            try:  # (TooSlowError comes out of the with block, not out of the wait)
                with trio.fail_after(self.connect_timeout_s):
                    await self._connack.wait()
            except trio.TooSlowError:
                raise MqttFailure("no CONNACK from the broker in time") from None
            if self._connack_error:
                raise MqttFailure(f"broker refused the connection: {self._connack_error}")
            self.connected = True
            task_status.started()
            await trio.sleep_forever()

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

    def _check_open(self, sock: Any) -> None:
        """A socket paho closed, or replaced, ends this connection: never wait on it."""
        if not _is(self.client.socket(), sock) or sock.fileno() == -1:
            raise MqttFailure(self._reason("socket closed"))

    async def _wait(self, wait: Callable[[Any], Any], sock: Any) -> None:
        self._check_open(sock)
        try:
            await wait(sock)
        except trio.ClosedResourceError:  # paho closed it while we waited (notify_closing)
            raise MqttFailure(self._reason("socket closed")) from None
        except (OSError, ValueError) as err:  # the fd was refused by epoll
            raise MqttFailure(self._reason(f"socket unusable ({err})")) from None

    async def _reader(self, sock: Any) -> None:
        gather = self.read_gather_s
        while True:
            await self._wait(trio.lowlevel.wait_readable, sock)
            while self._read_turn(sock):
                # the budget is spent and more is waiting: let every other task run
                # (ticks, accepts, heartbeats), then go on without waiting for epoll
                self.yields += 1
                await trio.lowlevel.checkpoint()
            if gather:
                # drained: let the stream gather a while, so that one wake-up (an
                # epoll round, a task step, a recv) serves many messages, not one
                await trio.sleep(gather)

    def _read_turn(self, sock: Any) -> bool:
        """Read and handle packets until the socket is drained (False) or the turn's
        budget of ``read_batch`` packets or ``read_budget_s`` seconds is spent (True)."""
        now = trio.current_time()
        self.last_rx = now
        if self.on_read_burst is not None:
            self.on_read_burst()
        deadline = now + self.read_budget_s
        batch = self.read_batch
        splitter = self._splitter
        handler = self.handler
        tls = isinstance(sock, ssl.SSLSocket)
        packets = 0
        drained = False  # the last recv() got less than it asked for
        try:
            while True:
                item = splitter.next()
                if item is None:  # no whole packet left: read more, or wait
                    if self._eof or self._rx_error is not None:
                        self._to_paho(b"", sock)  # paho meets the end and says why
                        raise MqttFailure(self._reason("connection lost"))
                    if drained:  # saves the recv() that would say EAGAIN: epoll will
                        return False
                    got = self._recv(sock, tls)
                    if got < 0:
                        return False
                    drained = got < self.RECV_BYTES
                    continue
                packets += 1
                if type(item) is tuple:  # a QoS 0 PUBLISH: the fast path
                    self.delivered += 1
                    if handler is not None:
                        raw = item[0]
                        try:
                            topic: str | None = raw.decode()
                        except UnicodeDecodeError:
                            topic = None
                        handler(topic, item[1])
                elif type(item) is Packet:
                    self._to_paho(item.data, sock)
                elif type(item) is Retained:
                    self.delivered += 1
                    if handler is not None:
                        try:
                            topic = item.topic.decode()
                        except UnicodeDecodeError:
                            topic = None
                        handler(topic, item.payload, True)
                else:
                    assert type(item) is TooLarge
                    self._too_large(item)
                if packets >= batch:
                    return True
                if not packets & 3 and trio.current_time() > deadline:
                    return True
        except MalformedPacket as err:
            raise MqttFailure(f"malformed packet from the broker ({err})") from None
        except MqttFailure:
            raise
        except Exception as err:  # a decoder or callback error inside paho or ours
            raise MqttFailure(self._reason(f"read failed ({_why(err)})")) from err

    def _recv(self, sock: Any, tls: bool) -> int:
        """One recv() into the splitter: the bytes it gave, -1 if none were ready."""
        try:
            data = sock.recv(self.RECV_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return -1
        except OSError as err:  # ssl.SSLError is one too
            self._rx_error = err
            return 0
        if not data:
            self._eof = True
            return 0
        self._splitter.feed(data)
        got = len(data)
        while tls and sock.pending():  # decrypted bytes epoll cannot see
            more = sock.recv(sock.pending())
            self._splitter.feed(more)
            got += len(more)
        return got

    def _paho_recv(self, n: int) -> bytes:
        """paho's byte source (TrioClient.source): the packets we hand it."""
        # paho reads a payload 2,048 bytes at a time: an offset, not a copy of the
        # rest per read (quadratic on a large QoS 1 message)
        data, at = self._for_paho, self._paho_at
        if at < len(data):
            self._paho_at = at + n
            return data[at : at + n]
        if self._rx_error is not None:
            raise self._rx_error
        if self._eof:
            return b""
        raise BlockingIOError

    def _to_paho(self, packet: bytes, sock: Any) -> None:
        """paho reads and handles one packet (or, with none, meets the stream's end)."""
        self._for_paho, self._paho_at = packet, 0
        rc = self.client.loop_read()
        if rc != _OK:
            raise MqttFailure(self._reason(f"connection lost ({paho.error_string(rc)})"))
        if not _is(self.client.socket(), sock):  # paho closed it (a DISCONNECT, an error)
            raise MqttFailure(self._reason("socket closed"))
        if self.client.want_write():
            self._want_write.set()

    def _too_large(self, item: TooLarge) -> None:
        # acknowledged like any other: the broker must not resend it, nor count it in
        # flight; a QoS 2 PUBREL that follows reaches paho, which completes it
        if item.qos:
            self._raw += bytes((0x40 if item.qos == 1 else 0x50, 2)) + item.packet_id.to_bytes(
                2, "big"
            )
            self.kick()
        if self.on_too_large is not None:
            try:
                topic: str | None = item.topic.decode()
            except UnicodeDecodeError:
                topic = None
            self.on_too_large(topic, item.payload_bytes)

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
                    except (
                        BlockingIOError,
                        InterruptedError,
                        ssl.SSLWantWriteError,
                        ssl.SSLWantReadError,
                    ):
                        sent = 0
                    except (OSError, ValueError) as err:
                        raise MqttFailure(self._reason(f"write failed ({_why(err)})")) from None
                    del raw[:sent]
                    continue
                try:
                    rc = client.loop_write()
                except Exception as err:
                    raise MqttFailure(self._reason(f"write failed ({_why(err)})")) from err
                if rc != _OK:
                    raise MqttFailure(self._reason(f"write failed ({paho.error_string(rc)})"))
            self._writable.set()
            self._writable = trio.Event()

    async def _watchdog(self, sock: Any) -> None:
        limit = 1.5 * self.keepalive
        client = self.client
        while True:
            await trio.sleep(min(0.5, self.keepalive / 4))
            try:
                rc = client.loop_misc()
            except Exception as err:
                raise MqttFailure(self._reason(f"keepalive failed ({_why(err)})")) from err
            if rc != _OK:
                raise MqttFailure(self._reason(f"keepalive failed ({paho.error_string(rc)})"))
            self._check_open(sock)  # paho may have given up on a missing PINGRESP
            if client.want_write():
                self._want_write.set()
            silent = trio.current_time() - self.last_rx
            if silent > limit:
                raise MqttFailure(f"nothing received for {silent:.1f} s (1.5 x keepalive)")

    # -- paho callbacks (run synchronously inside loop_read/loop_write/loop_misc) ---------

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._want_write.set()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # called just before paho closes the socket: Trio must forget the fd first
        # (waiters get ClosedResourceError), before the kernel can hand it out again
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
        # a QoS 1/2 PUBLISH (the fast path takes QoS 0)
        self.delivered += 1
        if self.handler is not None:
            try:
                topic: str | None = msg.topic
            except UnicodeDecodeError:
                topic = None
            payload = msg.payload
            data = payload if type(payload) is bytes else bytes(payload)
            if msg.retain:  # from the broker's store (see mqttwire.Retained)
                self.handler(topic, data, True)
            else:
                self.handler(topic, data)
