"""A deliberately low-level WebSocket client for tests that need to misbehave.

It speaks just enough RFC 6455 to open a connection and exchange frames, and lets a
test send anything (unmasked frames, bad lengths, garbage) or simply stop reading.
"""

from __future__ import annotations

import base64
import os
import socket
import struct

import orjson
import trio


class RawWs:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.rsv1 = False  # of the last frame received

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        path: str = "/ws",
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> RawWs:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        self = cls(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            *([] if "Host" in (headers or {}) else [f"Host: 127.0.0.1:{port}"]),
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        await self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            data = await sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)
        }
        return self

    async def send_raw(self, data: bytes) -> None:
        """All of ``data``: a send may take only part of it (a full send buffer, TCP
        memory pressure), and going on with the next frame would send garbage."""
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view) :]

    @staticmethod
    def frame(
        payload: bytes,
        opcode: int = 1,
        *,
        fin: bool = True,
        mask: bool = True,
        rsv: int = 0,
        length: int | None = None,
    ) -> bytes:
        n = len(payload) if length is None else length
        head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        mbit = 0x80 if mask else 0
        if n < 126:
            head += bytes([mbit | n])
        elif n < 65536:
            head += bytes([mbit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([mbit | 127]) + struct.pack("!Q", n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return head + key + masked

    async def send_json(self, obj: object) -> None:
        await self.send_raw(self.frame(orjson.dumps(obj)))

    async def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; (-1, b"") at EOF."""
        while True:
            if len(self.buf) >= 2:
                opcode = self.buf[0] & 0x0F
                n = self.buf[1] & 0x7F
                off = 2
                if n == 126:
                    if len(self.buf) < 4:
                        n = -1
                    else:
                        n = struct.unpack("!H", self.buf[2:4])[0]
                        off = 4
                elif n == 127:
                    if len(self.buf) < 10:
                        n = -1
                    else:
                        n = struct.unpack("!Q", self.buf[2:10])[0]
                        off = 10
                if n >= 0 and len(self.buf) >= off + n:
                    self.rsv1 = bool(self.buf[0] & 0x40)  # permessage-deflate
                    payload = self.buf[off : off + n]
                    self.buf = self.buf[off + n :]
                    return opcode, payload
            try:
                data = await self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                return -1, b""
            self.buf += data

    async def recv_json(self) -> dict:
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == 1:
                return orjson.loads(payload)
            if opcode in (8, -1):
                raise ConnectionError(f"closed: {self.close_code(payload)}")

    async def close_code_at_end(self) -> int | None:
        """Read until the close frame or EOF; the close code, or None for none."""
        while True:
            opcode, payload = await self.recv_frame()
            if opcode == 8:
                return self.close_code(payload)
            if opcode == -1:
                return None

    @staticmethod
    def close_code(payload: bytes) -> int | None:
        return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None

    def close(self) -> None:
        self.sock.close()
