"""permessage-deflate (RFC 7692), shaped for fan-out.

A screen on `#` receives the same tick frame as every other screen in its group, so the
gateway compresses each frame **once** and writes the same bytes to all of them. That
is only possible without context takeover on the server side: every message is a
complete deflate stream of its own (``server_no_context_takeover``, which a server may
always choose). JSON deltas compress well even so: a tick frame of a 2,000-device fleet
shrinks to about 15% at level 1, for about 4 ns of CPU per input byte, paid once per
frame and not once per screen.

Inbound, wsproto inflates what clients send (browsers compress their messages once the
extension is negotiated); :class:`BoundedDeflate` stops inflating at the message limit,
so a small "deflate bomb" cannot make the gateway allocate more than it allows for a
message. We ask clients for a small window (``client_max_window_bits``) when they let
us, to keep the inflate state of a connection small.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .sockio import text_frame_header

__all__ = ["BoundedDeflate", "deflate_frame", "deflate_frame_steps", "negotiate"]

#: frames smaller than this go out uncompressed (deflate cannot win much there)
MIN_BYTES = 256
#: input bytes deflate_frame_steps() compresses per step (~0.3 ms of CPU at level 1)
STEP_BYTES = 64 << 10
#: zlib level: 1 gets most of the gain (15% of the size) for a tenth of level 6's time
LEVEL = 1
#: the inflate window we ask clients to compress with, when they let us choose
CLIENT_WINDOW_BITS = 10
_PARAMS = {
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
}


class BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate with inflation stopped at ``max_bytes`` a message."""

    def __init__(self, max_bytes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.max_bytes = max_bytes
        self._inflated = 0

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if self._inbound_compressed is None:  # the first frame of a message
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self.max_bytes - self._inflated
        try:
            # one byte more than the room: producing it proves the message too big,
            # without ever inflating more than that
            out = self._decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_bytes:
            return CloseReason.MESSAGE_TOO_BIG
        return out


def _offers(header: bytes) -> list[tuple[str, dict[str, str]]]:
    out = []
    for offer in header.decode("latin-1").split(","):
        name, *params = (p.strip() for p in offer.split(";"))
        values: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            key = key.strip().lower()
            if not key or key in values:
                values = {"": ""}  # empty or repeated parameter: an invalid offer
                break
            values[key] = value.strip().strip('"')
        out.append((name.lower(), values))
    return out


def negotiate(header: bytes | None, max_bytes: int) -> tuple[bytes, BoundedDeflate] | None:
    """The ``Sec-WebSocket-Extensions`` answer and the wsproto extension for the first
    acceptable permessage-deflate offer in ``header``, or None (no compression).

    Declined: unknown or repeated parameters, bad values, and offers that limit the
    server's window below 15 bits (our shared frames are compressed once, with the
    full window, for every screen)."""
    if not header:
        return None
    for name, params in _offers(header):
        if name != "permessage-deflate" or not set(params) <= _PARAMS:
            continue
        answer = ["permessage-deflate", "server_no_context_takeover"]
        if "server_max_window_bits" in params:
            if params["server_max_window_bits"] != "15":
                continue
            answer.append("server_max_window_bits=15")
        if "client_no_context_takeover" in params:
            if params["client_no_context_takeover"]:
                continue
            answer.append("client_no_context_takeover")
        if "client_max_window_bits" in params:
            value = params["client_max_window_bits"] or "15"
            if not value.isdigit() or not 8 <= int(value) <= 15:
                continue
            answer.append(f"client_max_window_bits={min(int(value), CLIENT_WINDOW_BITS)}")
        text = "; ".join(answer)
        ext = BoundedDeflate(max_bytes)
        ext.accept(text)  # takes the parameters (and is enabled) as negotiated
        return text.encode(), ext
    return None


def _compressor() -> zlib._Compress:
    return zlib.compressobj(LEVEL, zlib.DEFLATED, -15)


#: One compressor for every message. A full flush (Z_FULL_FLUSH) ends each message with
#: the empty stored block and resets the compressor's state, so the next message refers
#: to nothing before it: the bytes are exactly those of a fresh compressor (the server
#: takes no context over), without allocating and clearing ~256 KiB of deflate state
#: for every message (a welcome, an ack, a pong, a screen's personal catch-up).
_shared = _compressor()


def deflate_frame(payload: bytes) -> bytes:
    """A complete compressed text frame (RSV1 set) for ``payload``; small payloads are
    framed as they are."""
    global _shared
    if len(payload) < MIN_BYTES:
        return text_frame_header(len(payload)) + payload
    c = _shared
    try:
        data = c.compress(payload) + c.flush(zlib.Z_FULL_FLUSH)
    except BaseException:
        _shared = _compressor()  # a half-compressed message must not lead the next one
        raise
    data = data[:-4]  # RFC 7692 7.2.1: without the empty block's 00 00 ff ff
    return text_frame_header(len(data), compressed=True) + data


def deflate_frame_steps(payload: bytes, step: int = STEP_BYTES) -> Iterator[bytes | None]:
    """:func:`deflate_frame` in steps, for a frame too large to compress between two
    checkpoints (a 10,000-topic join snapshot: ~1 MB, ~30 ms): yields ``None`` after
    each ``step`` input bytes (the caller checkpoints), then the frame, which is
    byte for byte what :func:`deflate_frame` gives. It uses a compressor of its own:
    other messages go through the shared one between the steps."""
    if len(payload) <= step:
        yield deflate_frame(payload)
        return
    c = _compressor()
    view = memoryview(payload)
    parts = []
    for start in range(0, len(payload), step):
        parts.append(c.compress(view[start : start + step]))
        yield None
    parts.append(c.flush(zlib.Z_FULL_FLUSH))
    data = b"".join(parts)[:-4]
    yield text_frame_header(len(data), compressed=True) + data
