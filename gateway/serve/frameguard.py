"""Inbound WebSocket frame headers checked before their payload arrives.

A wsproto extension that is never negotiated: it sees every inbound frame header
before any payload arrives, so the session can refuse a frame announcing more than the
message limit at once (close 1009, without waiting for a payload that may never come),
and knows when a frame has started and not finished (the message deadline).

It also bounds the work a peer can make us do per byte it sends. Frames are parsed
a whole read at a time, and data frames outside the message budget cost a few µs
each: a client with no token sending endless empty continuation frames (6 bytes each)
held the event loop over a second per read (found by an outside check). So a message
may come in at most :data:`MAX_FRAGMENTS` frames, and once the session is closing at
most :data:`AFTER_CLOSE` more data frames are parsed (a screen may have sent some as
our close crossed it): either refusal ends the parsing for good (close 1008)."""

from __future__ import annotations

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .lifecycle import Lifecycle

__all__ = ["AFTER_CLOSE", "MAX_FRAGMENTS", "FrameGuard"]

#: frames of one message (a client library that fragments at 4 KiB needs 16 for the
#: largest message; browsers send one)
MAX_FRAGMENTS = 128
#: data frames parsed once the session is closing (the rest waits unread: the close
#: frame's deadline ends the connection). Reading on keeps our close frame deliverable
#: (a socket closed with bytes unread sends a reset, and the peer's kernel drops what
#: it had not read yet): a client that sends a batch more without reading still gets
#: its close code; 1,024 empty frames are a few ms of parsing
AFTER_CLOSE = 1024


class FrameGuard(Extension):
    name = "x-gateway-frame-guard"  # internal: never offered, never in a header

    def __init__(self, max_bytes: int, life: Lifecycle | None = None) -> None:
        self.max_bytes = max_bytes
        self.in_frame = False  # a frame's header came, its payload is not complete
        #: the session's lifecycle (its ``ending``: closing, dropped or done); not the
        #: session, which holds this guard: a cycle would outlive a screen that left
        self.life = life
        self.fragments = 0  # frames of the message being received
        self.after_close = 0  # data frames parsed while closing

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
        if not opcode.iscontrol():
            self.fragments = self.fragments + 1 if opcode is Opcode.CONTINUATION else 1
            if self.fragments > MAX_FRAGMENTS:
                return CloseReason.POLICY_VIOLATION
            if self.life is not None and self.life.ending:
                self.after_close += 1
                if self.after_close > AFTER_CLOSE:
                    return CloseReason.POLICY_VIOLATION
        self.in_frame = payload_length > 0
        return RsvBits(False, False, False)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        self.in_frame = False
        return None
