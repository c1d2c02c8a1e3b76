"""Inbound WebSocket frame headers checked before their payload arrives.

A wsproto extension that is never negotiated: it sees every inbound frame header
before any payload arrives, so the session can refuse a frame announcing more than the
message limit at once (close 1009, without waiting for a payload that may never come),
and knows when a frame has started and not finished (the message deadline)."""

from __future__ import annotations

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = ["FrameGuard"]


class FrameGuard(Extension):
    name = "x-gateway-frame-guard"  # internal: never offered, never in a header

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_frame = False  # a frame's header came, its payload is not complete

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if payload_length > self.max_bytes:
            return CloseReason.MESSAGE_TOO_BIG
        self.in_frame = payload_length > 0
        return RsvBits(False, False, False)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        self.in_frame = False
        return None
