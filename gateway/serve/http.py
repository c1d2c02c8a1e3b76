"""Plain HTTP on the shared port (h11): requests, responses, the WebSocket upgrade.

Rules:
* Headers are limited to 16 KiB (h11 refuses larger: 431). A request must arrive
  whole within the handshake deadline (the caller's ``trio.fail_after``).
* A WebSocket upgrade is answered here (101 with ``Sec-WebSocket-Accept``), and the
  bytes the client sent after its request are handed to the WebSocket layer.
* Static files are served only from below the dashboard root (no traversal, no
  symlink escapes, no dotfiles).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import mimetypes
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import h11
import orjson
import trio

from .sockio import Outbound, recv_some

__all__ = [
    "HttpError", "Request", "read_request", "respond", "static_file", "try_respond",
    "websocket_accept",
]  # fmt: skip

log = logging.getLogger("gateway.server")

MAX_HEADER_BYTES = 16 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SERVER_HEADER = (b"server", b"trio-telemetry-gateway")

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


class HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # metric label


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: bytes
    path: str
    query: dict[str, str]
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def wants_websocket(self) -> bool:
        upgrade = self.header(b"upgrade")
        return upgrade is not None and upgrade.lower() == b"websocket"


def new_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)


async def read_request(sock: socket.socket, conn: h11.Connection) -> Request | None:
    """The next request, or None if the client closed. Raises :class:`HttpError`."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            status = err.error_status_hint
            raise HttpError(status, "malformed HTTP request", "bad_request") from None
        if event is h11.NEED_DATA:
            data = await recv_some(sock)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            target = event.target
            raw_path, _, raw_query = target.partition(b"?")
            try:
                path = urllib.parse.unquote(raw_path.decode("ascii"), errors="strict")
                query = {
                    k: v[0]
                    for k, v in urllib.parse.parse_qs(
                        raw_query.decode("ascii"), keep_blank_values=True, max_num_fields=50
                    ).items()
                }
            except (UnicodeDecodeError, ValueError):
                raise HttpError(400, "malformed request target", "bad_request") from None
            return Request(
                event.method.decode("ascii", "replace"),
                target,
                path,
                query,
                [(k.lower(), v) for k, v in event.headers],
            )
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        # Data/EndOfMessage of a request body we do not read: ignore and go on
        continue


async def respond(
    out: Outbound,
    conn: h11.Connection,
    status: int,
    body: bytes = b"",
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
) -> None:
    all_headers = [
        SERVER_HEADER,
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(headers or []),
    ]
    data = conn.send(h11.Response(status_code=status, headers=all_headers)) or b""
    if body and not head_only:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    out.send([data])
    await out.drain()


async def try_respond(out: Outbound, conn: h11.Connection, status: int, message: str) -> None:
    """A refusal, sent if the peer takes it within 2 s (then the connection closes)."""
    try:
        with trio.move_on_after(2.0):
            await respond(
                out, conn, status, message.encode() + b"\n", headers=[(b"connection", b"close")]
            )
    except (OSError, h11.LocalProtocolError):
        pass
    except Exception as err:
        log.debug("could not send %d: %r", status, err)


async def respond_raw_error(out: Outbound, status: int, message: str) -> None:
    """An error response on a connection whose request we have not parsed (503 early)."""
    body = message.encode()
    phrase = {503: b"Service Unavailable", 400: b"Bad Request"}.get(status, b"Error")
    data = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\nretry-after: 5\r\n\r\n" % (status, phrase, len(body))
    ) + body
    out.send([data])
    await out.drain()


def json_body(obj: object) -> bytes:
    return orjson.dumps(obj)


def websocket_accept(req: Request, subprotocols: tuple[str, ...]) -> list[tuple[bytes, bytes]]:
    """Headers of the 101 answer, or :class:`HttpError` for a bad upgrade request."""
    version = req.header(b"sec-websocket-version")
    if version != b"13":
        raise HttpError(426, "Sec-WebSocket-Version must be 13", "bad_upgrade")
    connection = req.header(b"connection") or b""
    if b"upgrade" not in [t.strip().lower() for t in connection.split(b",")]:
        raise HttpError(400, "Connection header must include 'upgrade'", "bad_upgrade")
    key = req.header(b"sec-websocket-key")
    try:
        if key is None or len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HttpError(
            400, "Sec-WebSocket-Key must be 16 bytes in base64", "bad_upgrade"
        ) from None
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", accept),
        SERVER_HEADER,
    ]
    offered = [
        p.strip().decode("ascii", "replace")
        for p in (req.header(b"sec-websocket-protocol") or b"").split(b",")
        if p.strip()
    ]
    for proto in offered:
        if proto in subprotocols:
            headers.append((b"sec-websocket-protocol", proto.encode()))
            break
    else:
        if offered:
            raise HttpError(400, f"no supported subprotocol among {offered}", "bad_upgrade")
    return headers


def static_file(root: Path, path: str) -> tuple[bytes, bytes] | None:
    """(body, content type) of a file below ``root``, or None."""
    rel = path.lstrip("/") or "index.html"
    if rel.endswith("/"):
        rel += "index.html"
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\x00" in rel:
        return None
    try:
        root_real = root.resolve(strict=True)
        target = (root_real / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root_real) or not target.is_file():
        return None
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/json", "image/svg+xml"):
        ctype += "; charset=utf-8"
    try:
        return target.read_bytes(), ctype.encode()
    except OSError:
        return None
