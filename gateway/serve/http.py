"""Plain HTTP on the shared port (h11): requests, responses, the WebSocket upgrade.

Rules:
* Headers are limited to 16 KiB (h11 refuses larger: 431). A request must arrive
  whole within the handshake deadline (the caller's ``trio.fail_after``).
* A WebSocket upgrade is answered here (101 with ``Sec-WebSocket-Accept``), and the
  bytes the client sent after its request are handed to the WebSocket layer.
* Every response has a write deadline (no progress for ``http_write_timeout_s``) and
  a whole-response deadline (``http_response_timeout_s``); its body counts toward
  the bodies held by all connections (budget.py) until it is written. A response cut
  raises :class:`ResponseCut`, never an internal error.
* A request's body is read to its end (and discarded, up to ``MAX_BODY_BYTES``)
  before the next request of a keep-alive connection.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import socket
import urllib.parse
from dataclasses import dataclass

import h11
import orjson
import trio

from .budget import HttpBodies
from .sockio import Outbound, SendFailed, recv_some

__all__ = [
    "HttpError", "Request", "ResponseCut", "ResponseLimits", "finish_request", "read_request",
    "respond", "try_respond", "websocket_accept",
]  # fmt: skip

log = logging.getLogger("gateway.server")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024  # a plain-HTTP request body (none of our routes reads one)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SERVER_HEADER = (b"server", b"trio-telemetry-gateway")


class HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason  # metric label


class ResponseCut(Exception):
    """A response not written whole: ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    write_timeout_s: float
    response_timeout_s: float
    bodies: HttpBodies


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: bytes
    path: str
    query: dict[str, str]
    headers: list[tuple[bytes, bytes]]
    http_version: bytes = b"1.1"

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def count(self, name: bytes) -> int:
        return sum(1 for key, _ in self.headers if key == name)

    @property
    def has_body(self) -> bool:
        length = self.header(b"content-length")
        return self.header(b"transfer-encoding") is not None or (
            length is not None and length.strip() != b"0"
        )

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
                event.http_version,
            )
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        # Data/EndOfMessage of a request body we do not read: ignore and go on
        continue


async def finish_request(sock: socket.socket, conn: h11.Connection, keep: bool = False) -> bytes:
    """Read the current request to its end, so that h11 can start the next cycle; its
    body is returned if ``keep`` (a POST), else discarded. Raises :class:`HttpError`
    (413) for a body over MAX_BODY_BYTES."""
    seen = 0
    kept: list[bytes] = []
    while conn.their_state is h11.SEND_BODY:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            raise HttpError(400, "malformed request body", "bad_request") from None
        if event is h11.NEED_DATA:
            data = await recv_some(sock)
            if not data:
                break
            conn.receive_data(data)
        elif isinstance(event, h11.Data):
            seen += len(event.data)
            if seen > MAX_BODY_BYTES:
                raise HttpError(413, "request body too large", "bad_request")
            if keep:
                kept.append(bytes(event.data))
        elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            break
    return b"".join(kept)


async def respond(
    out: Outbound,
    conn: h11.Connection,
    status: int,
    body: bytes = b"",
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
    limits: ResponseLimits | None = None,
) -> None:
    """Send a whole response; with ``limits``, within its deadlines and the bodies'
    budget (else :class:`ResponseCut`; over the budget a 503 is sent instead)."""
    send_body = bool(body) and not head_only
    held = len(body) if send_body and limits is not None else 0
    if held and limits is not None and not limits.bodies.reserve(held):
        with trio.move_on_after(limits.write_timeout_s):
            with contextlib.suppress(SendFailed):
                await respond(
                    out, conn, 503, b"busy: too many responses in flight, retry\n",
                    headers=[(b"retry-after", b"1"), (b"connection", b"close")],
                )  # fmt: skip
        raise ResponseCut("busy")
    try:
        all_headers = [
            SERVER_HEADER,
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            *(headers or []),
        ]
        # the body goes out as it is (passthrough): never copied behind the headers
        chunks: list[bytes] = [
            conn.send(h11.Response(status_code=status, headers=all_headers)) or b""
        ]
        if send_body:
            chunks += conn.send_with_data_passthrough(h11.Data(data=body)) or []
        chunks.append(conn.send(h11.EndOfMessage()) or b"")
        try:
            out.send(chunks)
            if limits is None:
                await out.drain()
                return
            with trio.move_on_after(limits.response_timeout_s) as whole:
                await out.drain(limits.write_timeout_s)
        except SendFailed as err:
            raise ResponseCut(
                "client_gone" if err.reason in ("peer_gone", "closed") else
                "write_timeout" if err.reason == "stalled" else "error"
            ) from None  # fmt: skip
        if whole.cancelled_caught:
            raise ResponseCut("response_timeout")
    finally:
        if held and limits is not None:
            limits.bodies.release(held)


async def try_respond(
    out: Outbound, conn: h11.Connection, status: int, message: str, head_only: bool = False
) -> None:
    """A refusal, sent if the peer takes it within 2 s (then the connection closes)."""
    try:
        with trio.move_on_after(2.0):
            await respond(
                out,
                conn,
                status,
                message.encode() + b"\n",
                headers=[(b"connection", b"close")],
                head_only=head_only,
            )
    except (OSError, h11.LocalProtocolError, SendFailed):
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
