"""The WebSocket upgrade's fast path: a strict parse of a first ``GET /ws``, and the 101.

Sans-io and bounded: a connection's first request, when it is ``GET /ws``, is parsed
here, and the 101 answer is built from bytes.

A reconnect storm is thousands of these requests within a second; h11's general
parser and state machine were the largest part of what each one cost. The rules:

* Only a request h11 would accept the same way is taken here: ``GET /ws`` (with an
  optional query) in HTTP/1.1, ``\\r\\n`` line ends, header names that are tokens,
  values of visible ASCII with single spaces or tabs inside, exactly one ``Host``,
  no ``Content-Length`` or ``Transfer-Encoding``, the whole head within
  ``MAX_HEADER_BYTES``. Anything else (another method, path or version, a bare
  ``\\n``, obsolete line folding, control or non-ASCII bytes, a larger head) is
  handed to h11 with every byte read so far, and h11 answers it as it always did:
  this parser never refuses anything itself, so no limit or error changes.
* :func:`scan` decides from the first 8 bytes whether the request can be one for
  this path, so anything else reaches h11 without waiting for its head to end.
* The bytes after the head are the client's first WebSocket bytes.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from .http import MAX_HEADER_BYTES, Request

__all__ = ["MORE", "Head", "response_101", "scan"]

_REQUEST_LINE = re.compile(rb"GET (/ws(?:\?[\x21-\x7e]*)?) HTTP/1\.1\r\n")
#: h11's header line, narrowed: visible ASCII only (no obs-text, no control bytes)
_LINE = rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?)[ \t]*\r\n"
_HEADER_LINE = re.compile(_LINE)
#: every line of a head at once (atomic: a bad line never backtracks into the others)
_HEADER_LINES = re.compile(rb"(?>" + _LINE + rb")*")
_STARTS = (b"GET /ws ", b"GET /ws?")
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


@dataclass(frozen=True, slots=True)
class Head:
    """A ``GET /ws`` request taken by the fast path: the request, and the bytes the
    client sent after it (its first WebSocket bytes)."""

    request: Request
    raw: bytes  # the head itself (h11 reads it again if the upgrade is refused)
    trailing: bytes


class _More:
    """Not decided yet: the head is incomplete (read more, then scan again)."""

    __slots__ = ()


MORE = _More()


def scan(buf: bytes | bytearray, searched: int = 0) -> Head | _More | None:
    """What the bytes read so far on a new connection are: a :class:`Head`, ``MORE``
    (keep reading), or None (h11's: not a request this path takes, in any way).
    ``searched``: bytes already searched for the head's end by an earlier call."""
    start = bytes(buf[:8])
    if not (_STARTS[0].startswith(start) or _STARTS[1].startswith(start)):
        return None
    end = buf.find(b"\r\n\r\n", max(0, searched - 3))
    if end < 0:
        return MORE if len(buf) <= MAX_HEADER_BYTES else None
    if end + 4 > MAX_HEADER_BYTES:
        return None
    return _parse(bytes(buf[: end + 4]), bytes(buf[end + 4 :]))


def _parse(raw: bytes, trailing: bytes) -> Head | None:
    first = _REQUEST_LINE.match(raw)
    if first is None:
        return None
    block = raw[first.end() : -2]  # the header lines, each with its CRLF
    if _HEADER_LINES.fullmatch(block) is None:
        return None
    headers = [(name.lower(), value) for name, value in _HEADER_LINE.findall(block)]
    hosts = 0
    for name, _ in headers:
        if name in _BODY_HEADERS:
            return None
        hosts += name == b"host"
    if hosts != 1:
        return None
    target = first[1]
    _, _, raw_query = target.partition(b"?")
    if not raw_query:
        return Head(Request("GET", target, "/ws", {}, headers), raw, trailing)
    try:
        query = {
            k: v[0]
            for k, v in urllib.parse.parse_qs(
                raw_query.decode("ascii"), keep_blank_values=True, max_num_fields=50
            ).items()
        }
    except ValueError:
        return None
    return Head(Request("GET", target, "/ws", query, headers), raw, trailing)


def response_101(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 answer with ``headers``, byte for byte what h11 writes for them."""
    return b"".join([b"HTTP/1.1 101 \r\n", *(b"%s: %s\r\n" % h for h in headers), b"\r\n"])
