"""The private paho hook the reader relies on (docs/architecture.md, MQTT ingest):
paho's Client._packet_read() must take every byte through self._sock_recv(n), which
TrioClient overrides to serve paho from the reader's buffer. If a paho upgrade reads
its socket any other way, paho and our reader would both read the one socket: this
fails first, loudly."""

from __future__ import annotations

import inspect
import re

import paho.mqtt.client as paho

from gateway.ingest.paho_client import TrioClient


def test_paho_reads_every_byte_through_sock_recv() -> None:
    assert callable(getattr(paho.Client, "_sock_recv", None)), "paho.Client._sock_recv is gone"
    source = inspect.getsource(paho.Client._packet_read)
    reads = re.findall(r"self\._sock\.\w+\(|self\._sock_recv\(", source)
    assert reads, "paho's _packet_read no longer reads through _sock_recv"
    assert set(reads) == {"self._sock_recv("}, f"paho reads its socket directly: {reads}"
    assert list(inspect.signature(paho.Client._sock_recv).parameters) == ["self", "bufsize"]
    # and nothing else in paho reads the socket behind the hook
    whole = inspect.getsource(paho)
    assert not re.search(r"_sock\.recv(_into)?\(", whole.replace("self._sock.recv(bufsize)", ""))


def test_paho_handles_a_packet_read_from_the_trio_client_source() -> None:
    client = TrioClient(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    pending = [b"\x20\x02\x00\x00"]  # CONNACK, accepted
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        if not pending[0]:
            raise BlockingIOError
        data, pending[0] = pending[0][:n], pending[0][n:]
        return data

    connacks: list[object] = []
    client.on_connect = lambda c, u, flags, reason, props: connacks.append(reason)
    client.source = source
    client._sock = object()  # loop_read() wants a socket; it must never touch it
    try:
        assert client.loop_read() == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
    finally:
        client._sock = None
    assert [str(r) for r in connacks] == ["Success"]
    assert asked[:3] == [1, 1, 2]  # command byte, remaining length, body
