"""A client's whole, masked text frames, read without wsproto while nothing else came.

A reconnecting screen sends a few small text messages (``resume``, ``subscribe``),
each one complete frame; wsproto's general frame parser cost more than everything
else the gateway does with them. Rules:

* Taken here: a final (FIN), masked text frame without RSV bits (not compressed) and
  with a 7- or 16-bit length up to the message limit, whole in the bytes given, whose
  payload is valid UTF-8. Anything else (a control, binary, fragmented, compressed,
  unmasked or larger frame, a partial one, invalid UTF-8) ends the fast path for the
  connection: those bytes and every later one go to wsproto, which was given nothing
  before and so starts at a frame boundary, and answers them as it always did
  (a close 1002 or 1007, the pong, the inflated message). Hence nothing is refused here.
* ``stop()``: the connection is closing; the rest goes to wsproto (which reads on for
  the close frame's answer, as before).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["text_frames"]


def _unmask(key: bytes, payload: bytes) -> bytes:
    n = len(payload)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little")


def text_frames(
    data: bytes, limit: int, on_text: Callable[[str], None], stop: Callable[[], bool]
) -> bytes:
    """Hand each whole text frame at the start of ``data`` to ``on_text``; returns the
    bytes from the first frame not taken on (b"": all were taken)."""
    pos = 0
    end = len(data)
    while pos < end and not stop():
        if end - pos < 6 or data[pos] != 0x81:  # FIN, no RSV, text
            break
        length = data[pos + 1] ^ 0x80  # the mask bit must be set
        head = 6
        if length == 126:
            if end - pos < 8:
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            head = 8
            if length < 126:  # not the shortest length: wsproto's to refuse (1002)
                break
        elif length > 126:  # unmasked, or a 64-bit length
            break
        if length > limit or end - pos < head + length:
            break
        payload = _unmask(data[pos + head - 4 : pos + head], data[pos + head : pos + head + length])
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            break
        pos += head + length
        on_text(text)
    return data[pos:] if pos else data
