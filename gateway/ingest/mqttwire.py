"""MQTT packet framing for the receive side, sans-io: bytes in, packets out.

:class:`Splitter` cuts a byte stream from the broker into MQTT packets (3.1.1 or 5),
whatever the chunk boundaries. It decodes only what the ingest's fast path needs:

* a QoS 0 PUBLISH comes out as ``(topic, payload)`` (both ``bytes``): it carries no
  protocol state, so nobody else needs to see it; one with the RETAIN flag (the
  broker's stored message, sent because we subscribed: MQTT 3.1.1 3.3.1.3) as
  :class:`Retained`, rare enough to cost the live path nothing;
* every other packet (CONNACK, SUBACK, PINGRESP, a QoS 1/2 PUBLISH, DISCONNECT, ...)
  comes out whole as :class:`Packet`, for paho to handle as if it had read it itself;
* a PUBLISH whose payload exceeds ``max_payload`` bytes (or whose MQTT 5 properties
  exceed :data:`MAX_PROPERTIES`) comes out as :class:`TooLarge` as soon as its topic
  and packet id are in, and the rest of it is dropped as it streams in: it is never
  buffered whole;
* a packet that breaks the framing rules raises :class:`MalformedPacket`: a remaining
  length longer than 4 bytes, a topic or properties longer than their packet, QoS 3,
  a packet other than PUBLISH larger than :data:`MAX_OTHER`. The stream cannot be
  resynchronised after that: the connection must end.

The buffer holds at most one incomplete packet (bounded by the limits above) plus the
last chunk fed in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_OTHER", "MAX_PROPERTIES", "MalformedPacket", "Packet", "Retained", "Splitter", "TooLarge",
]  # fmt: skip

#: the largest packet other than a PUBLISH we buffer (a broker's CONNACK, SUBACK,
#: DISCONNECT and AUTH are a few hundred bytes, with MQTT 5 reason strings and
#: user properties a few KiB)
MAX_OTHER = 256 * 1024
#: MQTT 5 properties of one PUBLISH larger than this make it "too large" like its payload
MAX_PROPERTIES = 64 * 1024

_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}


class MalformedPacket(ValueError):
    """The broker's byte stream broke MQTT's framing; the message says how."""


@dataclass(frozen=True, slots=True)
class Packet:
    """A whole packet, fixed header included, exactly as received."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Retained:
    """A QoS 0 PUBLISH the broker sent from its store (RETAIN set): old news of unknown
    age, not proof that the device is alive now."""

    topic: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A PUBLISH being skipped: its payload (or its properties) is over the limit."""

    qos: int
    packet_id: int  # 0 for QoS 0
    topic: bytes
    payload_bytes: int


class Splitter:
    def __init__(self, *, v5: bool, max_payload: int) -> None:
        self.v5 = v5
        self.max_payload = max_payload
        self._buf = b""
        self._pos = 0  # the next packet starts here
        self._skip = 0  # bytes of a TooLarge PUBLISH still to drop as they arrive

    def feed(self, data: bytes) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
            if not data:
                return
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data
        self._pos = 0

    def buffered(self) -> int:
        """Bytes held, not yet returned as packets."""
        return len(self._buf) - self._pos

    def next(self) -> tuple[bytes, bytes] | Packet | Retained | TooLarge | None:
        """The next packet, or None until more bytes are fed."""
        buf = self._buf
        p = self._pos
        n = len(buf)
        if p >= n:
            return None
        # fixed header: the type and flags byte, then "remaining length", 7 bits a byte
        i = p + 1
        rl = 0
        shift = 0
        while True:
            if i >= n:
                return None
            byte = buf[i]
            i += 1
            rl |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift == 28:
                raise MalformedPacket("remaining length longer than 4 bytes")
        end = i + rl
        b0 = buf[p]
        if b0 >> 4 != 3:
            if rl > MAX_OTHER:
                name = _NAMES.get(b0 >> 4, f"type {b0 >> 4}")
                raise MalformedPacket(f"a {name} packet of {rl} bytes (limit {MAX_OTHER})")
            if end > n:
                return None
            self._pos = end
            return Packet(buf[p:end])
        # PUBLISH: topic (2-byte length + UTF-8), packet id if QoS > 0, v5 properties
        qos = (b0 >> 1) & 3
        if qos == 3:
            raise MalformedPacket("a PUBLISH with QoS 3")
        if rl < 2:
            raise MalformedPacket("a PUBLISH too short for its topic length")
        if i + 2 > n:
            return None
        tl = (buf[i] << 8) | buf[i + 1]
        h = i + 2 + tl + (2 if qos else 0)
        if h > end:
            raise MalformedPacket("a PUBLISH whose topic is longer than the packet")
        if h > n:
            return None
        props = 0
        payload_at = h
        if self.v5:
            shift = 0
            while True:
                if payload_at >= end:
                    raise MalformedPacket("a PUBLISH whose properties are longer than the packet")
                if payload_at >= n:
                    return None
                byte = buf[payload_at]
                payload_at += 1
                props |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
                if shift == 28:
                    raise MalformedPacket("a PUBLISH whose property length is over 4 bytes")
            payload_at += props
            if payload_at > end:
                raise MalformedPacket("a PUBLISH whose properties are longer than the packet")
        size = end - payload_at
        if size > self.max_payload or props > MAX_PROPERTIES:
            pid = (buf[h - 2] << 8) | buf[h - 1] if qos else 0
            topic = buf[i + 2 : i + 2 + tl]
            if end > n:
                self._skip = end - n
                self._buf = b""
                self._pos = 0
            else:
                self._pos = end
            return TooLarge(qos, pid, topic, size)
        if end > n:
            return None
        self._pos = end
        if qos:
            return Packet(buf[p:end])
        if b0 & 1:
            return Retained(buf[i + 2 : i + 2 + tl], buf[payload_at:end])
        return buf[i + 2 : i + 2 + tl], buf[payload_at:end]
