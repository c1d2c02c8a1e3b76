"""paho-mqtt clients for one broker URL: the URL itself (``mqtt://`` or ``mqtts://``,
credentials, port), the TLS context and the client object. The connection that uses
them is :mod:`gateway.ingest.paho_trio`."""

from __future__ import annotations

import contextlib
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "BrokerUrl",
    "TlsOptions",
    "TrackingContext",
    "TrioClient",
    "close_quietly",
    "new_client",
    "parse_url",
]

# paho's private read hook: Client._packet_read() takes every byte it reads from
# self._sock_recv(n). TrioClient overrides it to serve paho from our own buffer
# (gateway.ingest.paho_trio). paho-mqtt 1.x and 2.0-2.2 have it; if an upgrade renames
# it, fail at import, loudly, rather than read from the socket behind our back
# (tests/ingest/test_paho_hook.py checks the same).
if not callable(getattr(paho.Client, "_sock_recv", None)):  # pragma: no cover
    raise ImportError(
        "paho-mqtt no longer has Client._sock_recv, the hook gateway.ingest.paho_trio "
        f"reads through (paho-mqtt {getattr(paho, '__version__', '?')}): pin paho-mqtt<2.3"
    )


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


def close_quietly(sock: Any) -> None:
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
            close_quietly(sock)
        self.created = []


class TrioClient(paho.Client):
    """A paho client that reads from :attr:`source` instead of its socket, once set.

    ``source(n)`` returns up to ``n`` bytes, raises BlockingIOError when it has none,
    returns b"" after the end of the stream and raises the OSError the socket gave.
    Until a source is set (the blocking connect), paho reads its socket as usual.
    """

    source: Callable[[int], bytes] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        source = self.source
        if source is None:
            return super()._sock_recv(bufsize)
        return source(bufsize)


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
) -> tuple[TrioClient, TrackingContext | None]:
    v5 = protocol == "5"
    client = TrioClient(
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
