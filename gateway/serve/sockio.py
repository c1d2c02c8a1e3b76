"""Non-blocking stdlib sockets driven by Trio's low-level waits, and the write queue.

Why not ``trio.SocketStream``: every ``send_all`` there costs two scheduler round
trips, which dominate fan-out (docs/architecture.md). Here a write is one
non-blocking ``sendmsg`` from whichever task has the frame; a task waits (with
``trio.lowlevel.wait_writable``) only when the kernel buffer is full.

Rules:
* Only :class:`Outbound` writes to a socket, and it never interleaves two writers:
  while its queue is non-empty every new chunk is appended behind it, and only the
  drain (one task) writes the queue out.
* A socket is closed with :func:`close_socket`, which first wakes any task waiting
  on it (``notify_closing``).
"""

from __future__ import annotations

import errno
import math
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

__all__ = ["Outbound", "close_socket", "recv_some", "text_frame_chunks", "text_frame_header"]

_IOV_MAX = 512  # chunks per sendmsg call (Linux allows 1024)
#: bytes a drain writes per step (a 1 MB join snapshot in one write: ~1 ms on loopback)
DRAIN_STEP_BYTES = 256 * 1024


def text_frame_header(length: int, compressed: bool = False) -> bytes:
    """Header of an unmasked, final WebSocket text frame (server to client); with
    ``compressed``, RSV1 is set (permessage-deflate)."""
    first = 0xC1 if compressed else 0x81
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def text_frame_chunks(data: bytes, copy_limit: int) -> list[bytes]:
    """One text frame as chunks for :meth:`Outbound.send`: up to ``copy_limit`` bytes
    as one right-sized copy (orjson's output sits in a buffer of at least 4 KiB, which
    a queued 40-byte pong would keep), larger as header + data, without a copy."""
    if len(data) <= copy_limit:
        return [text_frame_header(len(data)) + data]
    return [text_frame_header(len(data)), data]


async def recv_some(sock: socket.socket, max_bytes: int = 65536) -> bytes:
    """Bytes from the socket (b"" at EOF); a Trio checkpoint every call."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            continue


def close_socket(sock: socket.socket) -> None:
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        sock.close()


class SendFailed(Exception):
    """The peer is gone (reset, broken pipe); ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ByteCounter(Protocol):
    bytes_sent: int


class Outbound:
    """The ordered bytes still to write to one socket."""

    __slots__ = ("corked", "counter", "queue", "queued_bytes", "sock")

    def __init__(self, sock: socket.socket, counter: ByteCounter) -> None:
        self.sock = sock
        self.counter = counter  # shared: the server's bytes_sent total
        # a deque preallocates ~600 bytes; most sockets never queue anything, so the
        # queue is a list (pops from the front happen only while a socket is full)
        self.queue: list[memoryview | bytes] = []
        self.queued_bytes = 0
        #: while not None, what is sent is collected here, for one sendmsg (uncork)
        self.corked: list[bytes] | None = None

    @property
    def idle(self) -> bool:
        return not self.queue

    def send_one(self, data: bytes) -> bool:
        """:meth:`send` for one buffer: the fan-out fast path (one ``send`` call)."""
        if self.corked is not None:
            self.corked.append(data)
            return True
        if self.queue:
            self.queue.append(data)
            self.queued_bytes += len(data)
            return False
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as err:
            raise SendFailed(_reason(err)) from None
        self.counter.bytes_sent += n
        if n == len(data):
            return True
        self._queue_rest((data,), n)
        return False

    def send(self, chunks: Sequence[bytes]) -> bool:
        """Write now what the kernel takes, queue the rest. True if all went out.

        Raises :class:`SendFailed` if the peer is gone.
        """
        if self.corked is not None:
            self.corked += chunks
            return True
        if self.queue:
            self.queue.extend(chunks)
            self.queued_bytes += sum(len(c) for c in chunks)
            return False
        total = sum(len(c) for c in chunks)
        sent = self._sendmsg(chunks)
        if sent == total:
            return True
        self._queue_rest(chunks, sent)
        return False

    def cork(self) -> None:
        """Collect what is sent from now on, and write it in one go at :meth:`uncork`
        (the answers to the messages of one read, and the frames they release)."""
        self.corked = []

    def uncork(self) -> bool:
        """Write what was collected (as :meth:`send`); True if all went out."""
        chunks, self.corked = self.corked, None
        return self.send(chunks) if chunks else not self.queue

    def _sendmsg(self, chunks: Sequence[bytes | memoryview]) -> int:
        sent = 0
        for start in range(0, len(chunks), _IOV_MAX):
            part = chunks[start : start + _IOV_MAX]
            want = sum(len(c) for c in part)
            try:
                n = self.sock.sendmsg(part)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as err:
                raise SendFailed(_reason(err)) from None
            sent += n
            self.counter.bytes_sent += n
            if n < want:
                break
        return sent

    def _queue_rest(self, chunks: Sequence[bytes | memoryview], sent: int) -> None:
        for chunk in chunks:
            size = len(chunk)
            if sent >= size:
                sent -= size
                continue
            rest = memoryview(chunk)[sent:] if sent else chunk
            sent = 0
            self.queue.append(rest)
            self.queued_bytes += len(rest)

    async def drain(
        self,
        stall_s: float = math.inf,
        turn: Callable[[], Awaitable[None]] | None = None,
        step_bytes: int = DRAIN_STEP_BYTES,
    ) -> None:
        """Write the queue out, waiting for the socket as needed, at most
        ``step_bytes`` a write and, with ``turn``, awaiting it before each write; with
        ``stall_s``, a wait longer than that raises :class:`SendFailed` ("stalled").

        ``turn`` and ``step_bytes`` bound the scheduler batches a wave makes: 2,000
        screens joining one 10,000-topic stream uncompressed drain 1.5 MB each, and
        when their sockets became writable together one batch ran their writes at
        once (up to 250 ms; each write of a large chunk also runs the loopback
        receiver's kernel work in this thread).

        The socket is waited for only when the kernel took less than a write offered
        (it is full); after a write it took whole, the next one only waits its turn.
        A drain waiting for its turn is not also waiting for the socket, so it is not
        woken by the socket's readiness only to wait again: where sockets had room
        (screens reading as fast as the gateway writes), each 256 KiB was a wake-up by
        epoll and then one by the turns (``bench/drain_bench.py``: a third fewer drain
        steps; the scheduler batches over 5 ms no fewer)."""
        full = True  # a drain starts when the kernel did not take a write whole
        while self.queue:
            if full:
                if stall_s == math.inf:
                    await trio.lowlevel.wait_writable(self.sock)
                else:
                    with trio.move_on_after(stall_s) as waited:
                        await trio.lowlevel.wait_writable(self.sock)
                    if waited.cancelled_caught:
                        raise SendFailed("stalled")
            if turn is not None:
                await turn()
                if not self.queue:
                    return
            elif not full:
                await trio.lowlevel.checkpoint()  # no turns: still one write a step
            chunks: list[memoryview | bytes] = []
            room = step_bytes
            for chunk in self.queue[:_IOV_MAX]:
                if len(chunk) >= room:
                    chunks.append(memoryview(chunk)[:room])
                    break
                chunks.append(chunk)
                room -= len(chunk)
            sent = self._sendmsg(chunks)
            full = sent < sum(len(c) for c in chunks)
            while sent and self.queue:
                head = self.queue[0]
                if len(head) <= sent:
                    sent -= len(head)
                    self.queued_bytes -= len(head)
                    del self.queue[0]
                else:
                    self.queue[0] = memoryview(head)[sent:]
                    self.queued_bytes -= sent
                    sent = 0


def _reason(err: OSError) -> str:
    if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.ESHUTDOWN):
        return "peer_gone"
    if err.errno == errno.EBADF:
        return "closed"
    return "os_error"
