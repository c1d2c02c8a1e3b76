"""Control messages as WebSocket text frames; the welcome from pieces cached per gateway.

Every screen's welcome is the same but for ``server_time``, and in a reconnect storm
thousands go out within a second: encoding and deflating each was a large part of
what a screen cost on arrival. Rules:

* The JSON is exactly :func:`~gateway.core.protocol.encode`'s for the same
  :class:`~gateway.core.protocol.Welcome`: its bytes before and after the time are
  cached, the time is encoded on its own.
* Deflated (permessage-deflate, no context takeover), the frame is the cached
  deflate of the part before the time, a stored (uncompressed) deflate block with
  the time, then the cached deflate of the rest. Each cached part ends with a full
  flush (byte-aligned, refers to nothing before it), so their concatenation is one
  valid deflate stream that inflates to the whole JSON; the message drops the last
  empty block's ``00 00 ff ff`` as RFC 7692 7.2.1 says.
* The cache is keyed on every field but the time, and holds a few entries (an epoch,
  with and without auth); it is cleared when it grows past that.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import orjson

from ..core.protocol import Ack, Error, Pong, Welcome, encode
from .deflate import LEVEL, MIN_BYTES, deflate_frame
from .sockio import text_frame_header

__all__ = ["WelcomeFrames", "control_frame"]

#: a time no clock returns: where the real one goes in the cached JSON
_MARK_TIME = 1.2345678901234567e-300
_MARK = orjson.dumps(_MARK_TIME)
_MAX_ENTRIES = 8


def _deflated(data: bytes) -> bytes:
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)


def _stored(data: bytes) -> bytes:
    """A non-final stored deflate block (at a byte boundary) holding ``data``."""
    return b"\x00" + struct.pack("<HH", len(data), 0xFFFF ^ len(data)) + data


class WelcomeFrames:
    __slots__ = ("_pieces",)

    def __init__(self) -> None:
        #: key -> (JSON before the time, JSON after it, their deflates, the 2nd cut)
        self._pieces: dict[tuple[object, ...], tuple[bytes, bytes, bytes, bytes]] = {}

    def frame(self, welcome: Welcome, compressed: bool) -> bytes:
        """``welcome`` as one text frame, deflated when ``compressed``."""
        w = welcome
        meta = orjson.dumps(w.meta) if w.meta is not None else None
        key = (w.epoch, w.heartbeat_s, w.auth_required, id(w.limits), w.protocol,
               w.protocol_minor, meta, w.worker)  # fmt: skip
        pieces = self._pieces.get(key)
        if pieces is None:
            if len(self._pieces) >= _MAX_ENTRIES:
                self._pieces.clear()
            marked = dataclasses.replace(w, server_time=_MARK_TIME)
            before, mark, after = encode(marked).partition(_MARK)
            assert mark, "the welcome's time was not found in its JSON"
            pieces = (before, after, _deflated(before), _deflated(after)[:-4])
            self._pieces[key] = pieces
        before, after, z_before, z_after = pieces
        time = orjson.dumps(w.server_time)
        size = len(before) + len(time) + len(after)
        if not compressed or size < MIN_BYTES:
            return text_frame_header(size) + before + time + after
        data = z_before + _stored(time) + z_after
        return text_frame_header(len(data), compressed=True) + data


def control_frame(
    msg: Welcome | Ack | Error | Pong, compressed: bool, welcomes: WelcomeFrames
) -> bytes:
    """A control message as one text frame (deflated when ``compressed``, and at least
    ``MIN_BYTES``); a welcome from ``welcomes``' pieces."""
    if isinstance(msg, Welcome):
        return welcomes.frame(msg, compressed)
    data = encode(msg)
    return deflate_frame(data) if compressed else text_frame_header(len(data)) + data
