"""Load generator for the end-to-end benchmarks: many screens in one process.

Three kinds of screen, all on raw non-blocking sockets and epoll so that the load
generator is not the bottleneck:

  ws    a WebSocket subscriber speaking protocol v1 (our gateway; the naive fan-out
        peer accepts the same subscribe message and reads its filter)
  mqtt  an MQTT 3.1.1 subscriber reading the broker directly (the MQTT-over-WebSocket
        peer, without the WebSocket framing: see docs/benchmarks.md)

Every screen reads everything it is sent and counts the bytes. One screen in
``--sample-every`` (of each filter alike) also parses every message and records the
*data age* of its values (one in ``--age-step``, the position rotating): receipt time
minus the device timestamp ``ts`` set by the simulator when it published. Sampled
screens keep the latest value per topic, as a dashboard would. The other screens
waiting for a snapshot (``--expect``) record when each message of their join arrived
and count its snapshot items when this process is idle: the join time is when the
bytes arrived, not when this process got round to inflating them.
With ``--stalled`` the screens connect and subscribe with a tiny receive buffer, then
never read again (the slow-screen workload).

    python bench/e2e_clients.py --port P --kind ws --clients N --filters '#,berlin/#'

Prints one JSON line at the end (its own CPU, bytes, sampled ages per second).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import resource
import selectors
import socket
import struct
import sys
import time
import zlib

import orjson


def masked(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    else:
        head = bytes([0x80 | opcode, 0xFE]) + struct.pack("!H", n)
    # the XOR as one big-integer operation: byte by byte in Python, a screen's resume
    # (a few KB of seqs) cost the screen processes more CPU than the gateway spent on
    # it, and the storm measured the benchmark's clients (a browser masks natively)
    stream = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + body


def mqtt_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def mqtt_packet(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray([first])
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def recv(sock: socket.socket, size: int) -> bytes | None:
    """What the socket has: None if nothing yet, b"" when the peer is gone."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def upgrade_request(port: int, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"{extra}Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Screen:
    __slots__ = (
        "backlog",
        "backlog_bytes",
        "backlog_since",
        "buf",
        "bytes",
        "expect",
        "filt",
        "inflater",
        "latest",
        "messages",
        "phase",
        "sample",
        "snapshot_at",
        "snapshots",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, filt: str, sample: bool, expect: int) -> None:
        self.sock = sock
        self.filt = filt
        self.sample = sample
        self.state = "handshake"
        self.buf = bytearray()
        self.bytes = 0
        self.messages = 0
        self.phase = 0  # which values of the next message give their age (AGE_STEP)
        self.latest: dict[str, float] = {}
        #: topics in the snapshot this screen waits for (0: none awaited); once that
        #: many snapshot items arrived, snapshot_at is the wall time it happened
        self.expect = expect
        self.snapshots = 0
        self.snapshot_at: float | None = None
        #: the join's messages as they arrived (arrival time, payload, compressed?),
        #: counted later, when this process is idle (see verify)
        self.backlog: list[tuple[float, bytes, bool]] = []
        self.backlog_bytes = 0
        self.backlog_since = 0.0
        #: permessage-deflate with the server's context kept between messages (the
        #: `websockets` default) needs one decompressor per connection; None: a fresh
        #: one per message (the gateway: server_no_context_takeover)
        self.inflater: zlib._Decompress | None = None

    @property
    def parsing(self) -> bool:
        """Does this screen parse what it receives (or only count the bytes)?"""
        return self.sample or (self.expect > 0 and self.snapshot_at is None)


class Ages:
    """Data ages of the sampled screens: a histogram in milliseconds (mergeable across
    processes) and the largest age seen in each second of the run (its growth)."""

    LIMIT_MS = 120_000

    def __init__(self, start: float) -> None:
        self.start = start
        self.active = False
        self.hist = [0] * (self.LIMIT_MS + 1)
        self.max_by_second: dict[int, float] = {}

    def add(self, now: float, ts: object) -> None:
        if not self.active or (type(ts) is not float and type(ts) is not int):
            return
        age = now - ts  # type: ignore[operator]
        self.hist[min(self.LIMIT_MS, max(0, int(age * 1000)))] += 1
        sec = int(now - self.start)
        if age > self.max_by_second.get(sec, -1e9):
            self.max_by_second[sec] = age


#: a sampled screen takes the age of one value in this many (``--age-step``; the
#: phase rotates from message to message, so every position in a batch is sampled)
AGE_STEP = 1


def ws_values(payload: bytes, now: float, screen: Screen, ages: Ages) -> None:
    obj = orjson.loads(payload)
    items = obj["items"] if obj.get("type") == "batch" else [obj]
    if AGE_STEP > 1:
        items = items[screen.phase :: AGE_STEP]
        screen.phase = (screen.phase + 1) % AGE_STEP
    for item in items:
        kind = item.get("type")
        if kind in ("delta", "snapshot"):
            ts = item.get("ts")
            ages.add(now, ts)
            screen.latest[item["topic"]] = ts
        elif "payload" in item:  # the naive peer: one raw device message per frame
            data = item["payload"]
            if type(data) is dict:
                ages.add(now, data.get("ts"))
                screen.latest[item["topic"]] = data.get("ts")


#: screens with join messages recorded and not yet counted, in arrival order
DEFERRED: collections.deque[Screen] = collections.deque()
#: a screen's recorded join is counted at once beyond this (memory stays bounded)
BACKLOG_CAP = 32 << 20
#: and the oldest recorded joins are counted at once while all of them hold more than
#: this: a load process too busy to count them kept recording every screen's messages
#: (8,000 screens: 21 GB, until the kernel killed it)
TOTAL_BACKLOG_CAP = 1 << 30
recorded = [0]  # bytes held in every screen's backlog
#: and at the latest this long after its first recorded message, idle or not
VERIFY_LAG_S = 1.0


def inflate(screen: Screen, payload: bytes) -> bytes:
    inflater = screen.inflater or zlib.decompressobj(-15)
    return inflater.decompress(payload + b"\x00\x00\xff\xff")


def verify(screen: Screen) -> None:
    """Count the snapshot items in ``screen``'s recorded join messages, in order: the
    screen holds its snapshot from the arrival of the message that completes it."""
    for at, payload, compressed in screen.backlog:
        screen.snapshots += (inflate(screen, payload) if compressed else payload).count(
            b'"type":"snapshot"'
        )
        if screen.snapshots >= screen.expect:
            screen.snapshot_at = at
            break
    recorded[0] -= screen.backlog_bytes
    screen.backlog = []
    screen.backlog_bytes = 0


def parse_ws(screen: Screen, now: float, ages: Ages) -> None:
    buf = screen.buf
    pos = 0
    while len(buf) - pos >= 2:
        b1 = buf[pos + 1] & 0x7F
        head = 2
        if b1 == 126:
            if len(buf) - pos < 4:
                break
            b1 = struct.unpack_from("!H", buf, pos + 2)[0]
            head = 4
        elif b1 == 127:
            if len(buf) - pos < 10:
                break
            b1 = struct.unpack_from("!Q", buf, pos + 2)[0]
            head = 10
        if len(buf) - pos < head + b1:
            break
        opcode = buf[pos] & 0x0F
        if opcode == 1:
            screen.messages += ages.active
            payload = bytes(memoryview(buf)[pos + head : pos + head + b1])
            compressed = bool(buf[pos] & 0x40)  # permessage-deflate
            if screen.snapshot_at is None and screen.expect and not screen.sample:
                # The join: what is measured is when the bytes arrived; what they hold
                # is counted when this process is idle. Inflating every screen's
                # snapshot as it came (1.5 MB each for '#' at 10,000 devices) took the
                # load generator's core for seconds: the wave measured this process.
                if not screen.backlog:
                    DEFERRED.append(screen)
                    screen.backlog_since = now
                screen.backlog.append((now, payload, compressed))
                screen.backlog_bytes += len(payload)
                recorded[0] += len(payload)
                if screen.backlog_bytes > BACKLOG_CAP:
                    verify(screen)
                while recorded[0] > TOTAL_BACKLOG_CAP and DEFERRED:
                    verify(DEFERRED.popleft())
            else:
                if compressed:
                    payload = inflate(screen, payload)
                if screen.snapshot_at is None and screen.expect:
                    screen.snapshots += payload.count(b'"type":"snapshot"')
                    if screen.snapshots >= screen.expect:
                        screen.snapshot_at = now
                if screen.sample:
                    ws_values(payload, now, screen, ages)
        pos += head + b1
    del buf[:pos]


def parse_mqtt(screen: Screen, now: float, ages: Ages) -> None:
    buf = screen.buf
    pos, end = 0, len(buf)
    while end - pos >= 2:
        n = shift = 0
        i = pos + 1
        while i < end:  # the remaining length, a varint
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            break  # the length itself is incomplete
        if end - i < n:
            break
        if buf[pos] >> 4 == 3:  # PUBLISH, QoS 0: topic, payload
            tlen = struct.unpack_from("!H", buf, i)[0]
            topic = bytes(buf[i + 2 : i + 2 + tlen]).decode()
            payload = bytes(buf[i + 2 + tlen : i + n])
            screen.messages += ages.active
            screen.phase = (screen.phase + 1) % AGE_STEP
            if payload[:1] == b"{" and not screen.phase:
                ts = orjson.loads(payload).get("ts")
                ages.add(now, ts)
                screen.latest[topic] = ts
        pos = i + n
    del buf[:pos]


def per_screen(screens: list[Screen], filt: str) -> float:
    """Mean bytes received during the measurement by the screens on ``filt``."""
    mine = [s.bytes for s in screens if s.filt == filt]
    return sum(mine) / max(1, len(mine))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kind", choices=["ws", "mqtt"], default="ws")
    ap.add_argument("--clients", type=int, default=250)
    ap.add_argument("--filters", default="#", help="comma-separated, assigned round-robin")
    ap.add_argument("--rate", type=float, default=10.0, help="rate_hz asked of the gateway")
    ap.add_argument("--duration", type=float, default=30.0, help="measure for this long")
    ap.add_argument("--sample-every", type=int, default=25, help="1 screen in N parses")
    ap.add_argument("--age-step", type=int, default=1, help="a sampled screen ages 1 value in N")
    ap.add_argument("--stalled", action="store_true", help="subscribe, then never read")
    ap.add_argument(
        "--deflate", action="store_true", help="offer permessage-deflate, as browsers do"
    )
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    ap.add_argument("--start-at", type=float, default=0.0, help="wall time to start measuring")
    ap.add_argument(
        "--expect",
        default="",
        help="FILTER=N,...: screens on FILTER wait for a snapshot of N topics and report "
        "when they hold it (the join wave)",
    )
    args = ap.parse_args()
    global AGE_STEP
    AGE_STEP = max(1, args.age_step)
    expect = {f: int(n) for f, _, n in (e.rpartition("=") for e in args.expect.split(",") if e)}
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    filters = args.filters.split(",")
    sel = selectors.DefaultSelector()
    screens: list[Screen] = []
    extensions = (
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        if args.deflate
        else ""
    )
    for i in range(args.clients):
        s = socket.socket()
        if args.stalled:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", args.port))
        s.setblocking(False)
        filt = filters[i % len(filters)]
        # every filter sampled alike (i % N alone, with N even, sampled only the first)
        sampled = i // len(filters) % args.sample_every == 0
        screen = Screen(s, filt, sampled, expect.get(filt, 0))
        if args.kind == "ws":
            s.send(upgrade_request(args.port, extensions))
        else:
            body = (
                mqtt_string("MQTT")
                + bytes([4, 0x02])  # 3.1.1, clean session
                + struct.pack("!H", 0)  # no keepalive: the broker never drops us
                + mqtt_string(f"screen-{os.getpid()}-{i}")
            )
            s.send(mqtt_packet(0x10, body))
        screens.append(screen)
        sel.register(s, selectors.EVENT_READ, screen)
    ping = masked(1, b'{"type":"ping"}')
    total = 0
    start = time.time()
    ages = Ages(max(start, args.start_at))
    measuring = False
    cpu0 = cpu_seconds()
    bytes0 = 0
    subscribed = closed = 0
    next_ping = time.monotonic() + 10
    end = max(start, args.start_at) + args.duration
    scratch = bytearray(1 << 18)

    def read_light(screen: Screen) -> int:
        """Read what ``screen`` has without parsing it: bytes read, 0 at the end of
        the stream (or an error), -1 if nothing was there."""
        got = 0
        while True:
            try:  # MSG_TRUNC: TCP discards the bytes without copying them to us
                n = screen.sock.recv_into(scratch, len(scratch), socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return got or -1
            except OSError:
                return got
            if not n:
                return got
            got += n
            if n < len(scratch):
                return got

    by_second: dict[int, int] = {}  # wall second -> bytes received by all screens
    while time.time() < end:
        now = time.time()
        if not measuring and now >= args.start_at:
            measuring = ages.active = True
            cpu0, bytes0 = cpu_seconds(), total
            ages.start = now
        if args.kind == "ws" and time.monotonic() >= next_ping and not args.stalled:
            next_ping += 10  # an app-level ping: a live screen, not a silent one
            for screen in screens:
                if screen.state == "open":
                    with contextlib.suppress(OSError):
                        screen.sock.send(ping)
        events = sel.select(timeout=0 if DEFERRED else 0.2)
        now = time.time()  # when these bytes arrived (the select may have waited)
        if DEFERRED and (not events or now - DEFERRED[0].backlog_since > VERIFY_LAG_S):
            # idle, or a join recorded long ago: count recorded joins, a few
            # milliseconds at a time (a screen records everything until its join is
            # counted: on a saturated core, idle time alone never comes)
            until = time.perf_counter() + 0.005
            while DEFERRED and time.perf_counter() < until:
                verify(DEFERRED.popleft())
            if not events:
                continue
        for key, _ in events:
            screen = key.data
            if screen.state == "open" and not screen.parsing:
                n = read_light(screen)
                if n < 0:
                    continue
                if n:
                    total += n
                    by_second[int(now)] = by_second.get(int(now), 0) + n
                    if measuring:
                        screen.bytes += n
                    continue
                data = b""
            else:
                data = recv(screen.sock, 1 << 18)
                if data is None:
                    continue
            if not data:
                sel.unregister(screen.sock)
                screen.sock.close()
                screen.state = "closed"
                closed += 1
                continue
            total += len(data)
            by_second[int(now)] = by_second.get(int(now), 0) + len(data)
            if measuring:
                screen.bytes += len(data)
            screen.buf += data
            if screen.state == "handshake":
                if args.kind == "ws":
                    if b"\r\n\r\n" not in screen.buf:
                        continue
                    head, _, rest = bytes(screen.buf).partition(b"\r\n\r\n")
                    if b" 101 " not in head.split(b"\r\n", 1)[0]:
                        raise SystemExit(f"upgrade refused: {head[:80]!r}")
                    screen.buf = bytearray(rest)
                    ext = head.lower().partition(b"sec-websocket-extensions:")[2].split(b"\r\n")[0]
                    if b"permessage-deflate" in ext and b"server_no_context_takeover" not in ext:
                        screen.inflater = zlib.decompressobj(-15)
                    sub = {
                        "type": "subscribe",
                        "id": "s",
                        "filters": [screen.filt],
                        "rate_hz": args.rate,
                    }
                    screen.sock.send(masked(1, orjson.dumps(sub)))
                else:
                    if len(screen.buf) < 4:
                        continue
                    if screen.buf[0] != 0x20 or screen.buf[3] != 0:
                        raise SystemExit(f"CONNACK refused: {bytes(screen.buf[:4])!r}")
                    del screen.buf[:4]
                    body = struct.pack("!H", 1) + mqtt_string(screen.filt) + b"\x00"
                    screen.sock.send(mqtt_packet(0x82, body))
                screen.state = "open"
                subscribed += 1
                if args.stalled:
                    sel.unregister(screen.sock)  # never read again
                    continue
            if screen.parsing:
                (parse_ws if args.kind == "ws" else parse_mqtt)(screen, now, ages)
            else:
                screen.buf.clear()  # only the handshake's leftovers
    elapsed = time.time() - ages.start if measuring else 0.0
    cpu_s = cpu_seconds() - cpu0  # the window's, not the counting below
    while DEFERRED:  # the joins not counted yet (their arrival times were recorded)
        verify(DEFERRED.popleft())
    sampled = [s for s in screens if s.sample]
    result = {
        "clients": args.clients,
        "subscribed": subscribed,
        "closed": closed,
        "cpu_s": cpu_s,
        "seconds": elapsed,
        "bytes": total - bytes0,
        "bytes_by_filter": {f: per_screen(screens, f) for f in filters},
        "sampled": len(sampled),
        "sampled_messages": sum(s.messages for s in sampled),
        "sampled_bytes": sum(s.bytes for s in sampled),
        "age_hist_ms": {str(i): n for i, n in enumerate(ages.hist) if n},
        "max_by_second": {str(k): v for k, v in sorted(ages.max_by_second.items())},
        "bytes_by_wall_second": {str(k): v for k, v in sorted(by_second.items())},
        "snapshot_at": [s.snapshot_at for s in screens if s.expect],
        "connected_at": start,
    }
    for screen in screens:
        if screen.state != "closed":
            screen.sock.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
