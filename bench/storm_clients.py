"""Screens for the reconnect-storm benchmark: many clients in one process that keep a
mirror of their topics and reconnect with the client's backoff when the gateway goes.

Each screen is the Python client's logic on a raw non-blocking socket (so that 5,000 of
them fit on one core): the upgrade, `subscribe`, the same `Mirror` as
gateway/client.py applying snapshots and deltas (gaps counted), and on a lost
connection a reconnect after ``GatewayClient.next_delay`` (exponential, full jitter,
capped; after close 1012 within the restart window, refusals not growing it).

Like the client, a screen that finds the epoch it holds resumes (``resume`` with its
seqs, then ``subscribe``): a gateway with a state directory keeps its epoch over a
graceful restart, and then sends only deltas.

Protocol on stdin/stdout with bench/e2e_bench.py: the process prints ``ready EPOCH``
once every screen holds its topics, then, after the gateway's restart, one JSON line
with the wall time at which each screen held all its topics again: under a new epoch,
every topic from a snapshot; under the same epoch, once the gateway has answered its
``resume`` (``resumed: true``) and ``subscribe`` and sent the first state frame after
that (the deltas of the topics that changed since the screen's seqs: the hub sends
them in one go at the next tick; the fleet changes something every tick), or once
every topic is past the seq it held when the gateway closed it. A restored topic is
no longer marked stale by the restore, so waiting for every topic to change would
measure the fleet's live traffic, not the restart. The line also says what the
resumed screens' first state messages carried (:class:`Join`: deltas, distinct
topics, deltas that change only online/stale, snapshots) and the bytes of state
messages apart from welcome and acks. A screen whose topics did not change at all
gets no state message and counts as consistent only when they next change.

    python bench/storm_clients.py --port P --clients N --filters 'berlin/line1/#,...'
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import resource
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson

from bench.e2e_clients import masked, recv, upgrade_request
from gateway.client import GatewayClient
from gateway.core.mirror import Mirror
from gateway.core.protocol import Ack, Delta, ProtocolError, Snapshot, Welcome, decode_server


class Screen:
    def __init__(self, i: int, filt: str, rng: random.Random) -> None:
        self.i = i
        self.filt = filt
        self.backoff = GatewayClient("ws://unused/ws", [filt], rng=rng)  # its next_delay
        self.mirror = Mirror()
        self.sock: socket.socket | None = None
        self.state = "idle"
        self.buf = bytearray()
        self.attempt = 0
        self.retry_at = 0.0
        self.expected = 0  # topics held before the restart
        self.consistent_at: float | None = None
        self.connects = 0
        self.restart_at = -1e9  # when the gateway last said "restarting" (close 1012)
        self.held_at_close: dict[str, int] | None = None  # seqs when the restart began
        self.snapshots = 0  # snapshot messages received after the restart
        self.catch_up_bytes = 0  # message bytes from the restart until consistent
        self.catch_up_state_bytes = 0  # of which state messages (not welcome, acks)
        self.resumed = False  # the gateway answered resume with resumed: true
        self.subscribed = False  # ... and then subscribe (the join deltas come next)
        self.joined = False  # the resumed subscription's first state message came
        # the restart's timeline (wall times): when the connection held at the restart
        # ended (close 1012, or cut), the first attempt after that, the first handshake
        # answered (101) after it, and the attempts that failed before
        self.gone_at: float | None = None
        self.retry_first_at: float | None = None
        self.open_at: float | None = None
        self.failed_attempts = 0


class Join:
    """What the resumed screens' first state messages after ``subscribe`` carried: the
    topics that changed since each screen's seqs (the minimum a resume must send)."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.deltas = 0
        self.meta_only = 0  # deltas that change no field, only online/stale
        self.with_meta = 0  # deltas that carry online/stale (changed since the base)
        self.snapshots = 0
        self.topics: set[str] = set()  # distinct topics that changed while down


def frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames at the front of ``buf`` (removed from it)."""
    out, pos = [], 0
    while len(buf) - pos >= 2:
        n, head = buf[pos + 1] & 0x7F, 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if len(buf) - pos < head + n:
            break
        out.append((buf[pos] & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    del buf[:pos]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--filters", required=True, help="comma-separated, round-robin")
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up this long after the start, and again after the restart",
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--cpu", type=int, default=None)
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(args.seed)
    filters = args.filters.split(",")
    screens = [Screen(i, filters[i % len(filters)], rng) for i in range(args.clients)]
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    first_epoch: str | None = None
    restarted = False
    gaps = 0
    join = Join()
    deadline = time.monotonic() + args.timeout
    cpu_at_restart = 0.0

    def lost(s: Screen, now: float, restarted: bool = False) -> None:
        if s.sock is not None:
            sel.unregister(s.sock)
            s.sock.close()
            s.sock = None
        opened, s.state = s.state == "open", "idle"
        if restarted and s.gone_at is None:
            s.gone_at = time.time()
            if s.held_at_close is None and opened:
                # cut without the 1012 (the old gateway's close deadline passed while
                # this process was behind): the same restart, the same resume
                s.held_at_close = s.mirror.positions()
        elif not opened and s.gone_at is not None and s.open_at is None:
            s.failed_attempts += 1
        delay, s.attempt = s.backoff.next_delay(
            s.attempt, opened=opened, since_restart=now - s.restart_at, restarted=restarted
        )
        s.retry_at = now + delay

    def connect(s: Screen) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", args.port))
        s.sock, s.buf = sock, bytearray()
        if s.gone_at is not None and s.retry_first_at is None:
            s.retry_first_at = time.time()
        if err not in (0, errno.EINPROGRESS):
            sel.register(sock, selectors.EVENT_READ, s)
            lost(s, time.monotonic())
            return
        s.state = "connecting"
        sel.register(sock, selectors.EVENT_WRITE, s)

    def on_message(s: Screen, data: bytes) -> None:
        nonlocal gaps
        joined = False  # a state message after the resumed subscription's ack
        items = decode_server(data)
        state = any(isinstance(m, Snapshot | Delta) for m in items)
        if state and s.held_at_close is not None and s.consistent_at is None:
            s.catch_up_state_bytes += len(data)
        if restarted and s.subscribed and not s.joined and state:
            s.joined = True
            join.messages += 1
            join.bytes += len(data)
            for m in items:
                if isinstance(m, Delta):
                    join.deltas += 1
                    join.meta_only += not m.set and not m.unset
                    join.with_meta += m.meta
                    join.topics.add(m.topic)
                elif isinstance(m, Snapshot):
                    join.snapshots += 1
                    join.topics.add(m.topic)
        for msg in items:
            if isinstance(msg, Welcome):
                assert s.sock is not None
                # a new epoch drops the held copies; the same one resumes from them
                if s.mirror.set_epoch(msg.epoch) and s.mirror.topics:
                    resume = {"type": "resume", "epoch": msg.epoch, "topics": s.mirror.positions()}
                    s.sock.send(masked(1, orjson.dumps(resume)))
                sub = {"type": "subscribe", "id": "s", "filters": [s.filt], "rate_hz": args.rate}
                s.sock.send(masked(1, orjson.dumps(sub)))
            elif isinstance(msg, Ack):
                if s.held_at_close is not None:
                    if msg.op == "resume":
                        s.resumed = bool(msg.resumed)
                    elif msg.op == "subscribe" and s.resumed:
                        s.subscribed = True
            elif isinstance(msg, Snapshot | Delta):
                joined = joined or s.subscribed
                if restarted and isinstance(msg, Snapshot):
                    s.snapshots += 1
                if s.mirror.apply(msg) == "gap":
                    gaps += 1
                    raise ProtocolError("gap", "a delta without its base")  # resubscribe
        if restarted and s.consistent_at is None and len(s.mirror.topics) >= s.expected:
            held = s.held_at_close
            if (
                s.mirror.epoch != first_epoch
                or joined
                or (
                    held is not None
                    and all(m.seq > held.get(t, 0) for t, m in s.mirror.topics.items())
                )
            ):
                s.consistent_at = time.time()

    for s in screens:
        connect(s)
    while time.monotonic() < deadline:
        now = time.monotonic()
        for s in screens:
            if s.state == "idle" and now >= s.retry_at:
                connect(s)
        for key, _events in sel.select(timeout=0.05):
            s = key.data
            if s is None:  # the orchestrator: the gateway is being restarted
                if sys.stdin.readline():
                    restarted = True
                    cpu_at_restart = sum(os.times()[:2])
                    # however long getting ready and the wait before took
                    deadline = time.monotonic() + args.timeout
                else:
                    sel.unregister(sys.stdin)  # the orchestrator waits for our result
                continue
            assert s.sock is not None
            if s.state == "connecting":
                if s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    lost(s, now)
                    continue
                s.sock.send(upgrade_request(args.port))
                s.state = "handshake"
                sel.modify(s.sock, selectors.EVENT_READ, s)
                continue
            data = recv(s.sock, 1 << 16)
            if data is None:
                continue
            if not data:
                lost(s, now)
                continue
            s.buf += data
            if s.state == "handshake":
                if b"\r\n\r\n" not in s.buf:
                    continue
                head, _, rest = bytes(s.buf).partition(b"\r\n\r\n")
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    lost(s, now)  # 503 while it starts or sheds load: try again later
                    continue
                s.buf = bytearray(rest)
                s.state = "open"
                s.connects += 1
                if s.gone_at is not None and s.open_at is None:
                    s.open_at = time.time()
            try:
                for opcode, payload in frames(s.buf):
                    if opcode == 1:
                        if s.held_at_close is not None and s.consistent_at is None:
                            s.catch_up_bytes += len(payload)
                        on_message(s, payload)
                    elif opcode == 9:
                        s.sock.send(masked(10, payload))
                    elif opcode == 8:
                        if payload[:2] == (1012).to_bytes(2, "big"):
                            s.restart_at = now  # the gateway restarts: back shortly
                            if restarted and s.held_at_close is None:
                                s.held_at_close = s.mirror.positions()
                        raise ConnectionError("closed by the gateway")
            except (ProtocolError, ConnectionError, OSError):
                lost(s, now, restarted=s.restart_at == now)
                continue
        if first_epoch is None and all(s.mirror.topics for s in screens):
            epochs = {s.mirror.epoch for s in screens}
            if len(epochs) == 1:
                first_epoch = epochs.pop()
                for s in screens:
                    s.expected = len(s.mirror.topics)
                    s.attempt = 0  # connected for a while: the backoff starts afresh
                print(f"ready {first_epoch}", flush=True)
        if restarted and all(s.consistent_at is not None for s in screens):
            break
    print(
        json.dumps(
            {
                "consistent_at": [s.consistent_at for s in screens],
                "gone_at": [s.gone_at for s in screens],
                "retry_first_at": [s.retry_first_at for s in screens],
                "open_at": [s.open_at for s in screens],
                "failed_attempts": sum(s.failed_attempts for s in screens),
                "cpu_s": sum(os.times()[:2]) - cpu_at_restart,  # this process's, since
                "gaps": gaps,
                "connects": sum(s.connects for s in screens),
                "snapshots": sum(s.snapshots for s in screens),
                "catch_up_bytes": sum(s.catch_up_bytes for s in screens),
                "catch_up_state_bytes": sum(s.catch_up_state_bytes for s in screens),
                "held_topics": sum(s.expected for s in screens),
                "resumed": sum(s.joined for s in screens),
                "join": {
                    "messages": join.messages,
                    "bytes": join.bytes,
                    "deltas": join.deltas,
                    "meta_only": join.meta_only,
                    "with_meta": join.with_meta,
                    "snapshots": join.snapshots,
                    "topics": sorted(join.topics),
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
