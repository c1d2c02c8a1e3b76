"""The local channel between the parent and one worker: a socketpair of messages.

A message is ``u32 length, u8 kind, payload`` (little-endian). Kinds, parent to
worker: ``CONFIG`` (the worker's settings, pickled: both ends are this program),
``HISTORY`` / ``HISTORY_END`` (chart history in the checkpoint layout, before the
topics), ``RECORDS`` (a JSON array of topic records, snapshotfile.encode_records: the
full sync and the change stream alike), ``SYNCED`` (the full sync is complete: listen now),
``ACK_REPLY``; worker to parent: ``HELLO`` (started: the sync may begin), ``READY``
(serving; its admin port) and ``ACK`` (an ack_alarm to decide); both ways ``BEAT``
(empty, every :data:`BEAT_S` from each side's event loop: a side that hears nothing
for a while knows the other is hung, not only gone). JSON payloads are orjson.

Bounds: a message is at most :data:`MAX_MESSAGE` bytes (the reader refuses more:
the channel is broken and the worker restarted), and each direction queues at most
its :class:`Outbox` cap; ``push`` over the cap returns False and the caller decides
(the parent restarts a worker that cannot keep up, never grows).
"""

from __future__ import annotations

import collections
import struct
from enum import IntEnum
from typing import Final

import trio

__all__ = ["BEAT_S", "MAX_MESSAGE", "ChannelError", "Kind", "Outbox", "Reader"]

HEAD: Final = struct.Struct("<IB")
MAX_MESSAGE: Final = 256 << 20
BEAT_S: Final = 1.0
_READ: Final = 1 << 20


class Kind(IntEnum):
    CONFIG = 1
    HISTORY = 2
    HISTORY_END = 3
    RECORDS = 4
    SYNCED = 5
    ACK_REPLY = 6
    HELLO = 9
    READY = 10
    ACK = 11
    SCREENS = 12  # worker -> parent: {"open": screens now, "peak": most at once}
    BEAT = 13  # both ways: alive (see the module doc)


class ChannelError(Exception):
    """The peer sent something that is not a message of this channel."""


class Outbox:
    """Messages queued for the peer, at most ``cap`` bytes; one task writes them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.queued = 0  # bytes waiting
        self.sent = 0  # bytes written, all time
        self.overflowed = False
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = trio.Event()
        self._sent = trio.Event()

    def push(self, kind: Kind, payload: bytes = b"") -> bool:
        """Queue one message; False (and nothing queued, ``overflowed`` set) if the
        queue would pass its cap."""
        size = len(payload) + HEAD.size
        if self.overflowed or self.queued + size > self.cap:
            self.overflowed = True
            return False
        self._queue.append(HEAD.pack(len(payload), kind))
        if payload:
            self._queue.append(payload)  # the same bytes object for every worker
        self.queued += size
        self._wake.set()
        return True

    async def run(self, stream: trio.SocketStream) -> None:
        """Write what is queued, in order, until cancelled or the peer is gone (its
        end is seen by whoever reads or waits for it)."""
        queue = self._queue
        while True:
            if not queue:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            data = queue.popleft()
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self.queued -= len(data)
            self.sent += len(data)
            self._sent.set()

    async def wait_below(self, size: int) -> None:
        """Until at most ``size`` bytes are queued (a full sync goes at the reader's
        pace, leaving the rest of the cap to the change stream)."""
        while self.queued > size:
            self._sent = trio.Event()
            await self._sent.wait()


class Reader:
    """Messages from a stream, each whole; None at the end of the stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def receive(self) -> tuple[Kind, bytes] | None:
        buf = self._buf
        while True:
            if len(buf) >= HEAD.size:
                length, kind = HEAD.unpack_from(buf)
                if length > MAX_MESSAGE:
                    raise ChannelError(f"message of {length} bytes (at most {MAX_MESSAGE})")
                end = HEAD.size + length
                if len(buf) >= end:
                    payload = bytes(buf[HEAD.size : end])
                    del buf[:end]
                    try:
                        return Kind(kind), payload
                    except ValueError:
                        raise ChannelError(f"unknown message kind {kind}") from None
            data = await self.stream.receive_some(_READ)
            if not data:
                if buf:
                    raise ChannelError("the stream ended inside a message")
                return None
            buf += data
