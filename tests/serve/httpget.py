"""A minimal HTTP/1.1 client over a Trio socket, for endpoint tests."""

from __future__ import annotations

import socket

import trio


async def http_get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        host = [] if "Host" in (headers or {}) else [f"Host: 127.0.0.1:{port}"]
        lines = [f"{method} {path} HTTP/1.1", *host, "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := await sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *rest = head.decode().split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in rest)}
    return int(status_line.split()[1]), hdrs, body
