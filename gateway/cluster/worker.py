"""One worker of ``gateway run --workers N``: a replica store, serving screens.

Started by the parent as ``python -m gateway.cluster.worker FD`` with one end of a
socketpair as FD (channel.py). Rules:

* The worker decides nothing about the data: its store is a replica
  (``StateStore.apply_replica``) with the parent's epoch, seqs, versions and
  tombstones, so a screen that reconnects to any worker resumes with deltas. It runs
  no ingest, no stale sweep (nothing is armed on a replica), no alarm rules and no
  persistence. Its alarm engine only mirrors the parent's alarm topics (for
  ``/api/alarms``); ``ack_alarm`` is forwarded to the parent and answered when the
  parent answers (``unavailable`` after :data:`ACK_TIMEOUT_S`).
* Chart history: the parent's history comes with the full sync (the checkpoint
  section's layout); from then on the worker rebuilds it from the change stream
  (``History.observe_since``: every field changed since the seq it held).
* It listens only once the full sync is applied (``SYNCED``), on the shared public
  port (SO_REUSEPORT), and says ``READY`` with its admin port.
* The end of the channel (the parent is gone, or restarts this worker) stops the
  worker: its screens are closed 1012 and they reconnect to another worker. SIGTERM
  stops it the same way. A worker never outlives its parent.
* Both sides beat (``BEAT`` every second). A parent silent for
  :data:`PARENT_SILENT_S` (hung: stopped, or its loop stalled) makes this worker not
  ready (``/readyz`` 503, logged once): it goes on serving what it holds, whose data
  age grows for every screen to see, but it cannot mark anything stale itself (its
  seqs are the parent's). The parent restarts a worker it does not hear.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Final

import orjson
import trio

from ..app import Gateway, build
from ..auth import Identity
from ..config import Config
from ..core.alarms import ALARM_PREFIX
from ..core.history import HistoryMismatch
from ..core.protocol import Ack, AckAlarm, Error, encode
from ..core.snapshotfile import decode_records
from ..errors import user_error
from ..memory import tune_gc, tune_malloc
from ..serve.insight import Later
from .channel import BEAT_S, HEAD, Kind, Outbox, Reader

__all__ = ["ACK_TIMEOUT_S", "WorkerSetup", "main"]

log = logging.getLogger("gateway.worker")

ACK_TIMEOUT_S: Final = 5.0
MAX_PENDING_ACKS: Final = 1000
OUTBOX_BYTES: Final = 4 << 20  # the worker's messages to the parent (acks, ready)
APPLY_BATCH: Final = 500  # records applied between two checkpoints of the event loop
SCREENS_EVERY_S: Final = 1.0  # how often the parent may hear of this worker's screens
PARENT_SILENT_S: Final = 5.0  # no message from the parent this long: not ready


@dataclass(frozen=True)
class WorkerSetup:
    """What the parent sends first (``CONFIG``)."""

    cfg: Config  # public port: the shared one; no ingest, simulator or persistence
    index: int
    epoch: str
    log_level: str
    #: the parent's public listener (socket activation), at this descriptor: accept
    #: from it instead of binding the port with SO_REUSEPORT
    listener_fd: int | None = None


class Replica:
    def __init__(self, gw: Gateway, out: Outbox) -> None:
        self.gw = gw
        self.out = out
        self.serving = False
        self._history: list[bytes] | None = []  # chunks until HISTORY_END
        self._ids = itertools.count(1)
        self.pending: dict[int, tuple[Later, str, float]] = {}
        self.heard_at = trio.current_time()  # the parent's last message

    def ready(self) -> tuple[bool, str]:
        silent = trio.current_time() - self.heard_at
        if silent > PARENT_SILENT_S:
            return False, f"no message from the parent (the ingest) for {silent:.0f} s"
        return self.serving, "synced with the parent" if self.serving else "syncing"

    async def beat(self) -> None:
        """``BEAT`` to the parent every second, and a log line when the parent falls
        silent (and when it speaks again)."""
        silent = False
        while True:
            self.out.push(Kind.BEAT)
            now_silent = trio.current_time() - self.heard_at > PARENT_SILENT_S
            if now_silent != silent:
                silent = now_silent
                if silent:
                    log.error(
                        "no message from the parent for %.0f s (hung?): not ready; serving "
                        "what this worker holds, its data ageing",
                        PARENT_SILENT_S,
                    )
                else:
                    log.info("the parent speaks again: ready")
            await trio.sleep(BEAT_S)

    # -- the change stream -----------------------------------------------------------

    async def follow(self, reader: Reader, nursery: trio.Nursery) -> None:
        """Apply what the parent sends until the channel ends."""
        while True:
            try:
                msg = await reader.receive()
            except trio.BrokenResourceError:
                msg = None
            if msg is None:
                return
            kind, payload = msg
            self.heard_at = trio.current_time()
            if kind is Kind.RECORDS:
                await self._apply(payload)
            elif kind is Kind.ACK_REPLY:
                self._ack_reply(payload)
            elif kind is Kind.HISTORY and self._history is not None:
                self._history.append(payload)
            elif kind is Kind.HISTORY_END:
                await self._restore_history()
            elif kind is Kind.SYNCED and not self.serving:
                await self._serve(nursery)

    async def _apply(self, payload: bytes) -> None:
        gw = self.gw
        store, history, alarms = gw.store, gw.insight.history, gw.insight.alarms
        recs = decode_records(payload)  # a bug, not input, if it raises: the parent's
        for i in range(0, len(recs), APPLY_BATCH):
            for rec in recs[i : i + APPLY_BATCH]:
                prev = store.apply_replica(rec)
                if prev is None:
                    continue
                st = store.get(rec.topic)
                assert st is not None
                if rec.topic.startswith(ALARM_PREFIX):
                    alarms.mirror(st, st.changed_at)
                elif self._history is None:
                    history.observe_since(st, prev, st.changed_at)
            await trio.lowlevel.checkpoint()

    async def _restore_history(self) -> None:
        chunks, self._history = self._history or [], None
        try:
            for _ in self.gw.insight.history.restore(memoryview(b"".join(chunks))):
                await trio.lowlevel.checkpoint()
        except HistoryMismatch as err:
            log.warning("chart history not taken from the parent: %s", err)

    async def _serve(self, nursery: trio.Nursery) -> None:
        gw = self.gw
        await nursery.start(gw.server.serve)
        tune_gc()  # a worker owns its process: the synced state is long-lived (memory.py)
        self.serving = True
        nursery.start_soon(self._exit_when_stopped, nursery)
        ready = {"admin_port": gw.admin_port, "pid": os.getpid()}
        self.out.push(Kind.READY, orjson.dumps(ready))
        nursery.start_soon(self._report_screens)
        log.info(
            "worker %s serving on port %d (admin %d), %d topics, epoch %s",
            gw.server.session_ctx.worker,
            gw.port,
            gw.admin_port,
            len(gw.store),
            gw.store.epoch,
        )

    async def _report_screens(self) -> None:
        """Tell the parent how many screens this worker serves, when that changes
        (checked every :data:`SCREENS_EVERY_S`)."""
        server = self.gw.server
        last = (-1, -1)
        while True:
            now = (server.connections, server.stats.peak_connections)
            if now != last:
                self.out.push(Kind.SCREENS, orjson.dumps({"open": now[0], "peak": now[1]}))
                last = now
            await trio.sleep(SCREENS_EVERY_S)

    async def _exit_when_stopped(self, nursery: trio.Nursery) -> None:
        await self.gw.server.stopped.wait()
        nursery.cancel_scope.cancel()

    def stop(self, nursery: trio.Nursery) -> None:
        """Graceful: the server closes every screen (1012) and then the worker ends."""
        if self.serving:
            self.gw.server.request_shutdown()
        else:
            nursery.cancel_scope.cancel()

    # -- ack_alarm, decided by the parent ---------------------------------------------

    def forward_ack(self, identity: Identity, msg: AckAlarm, later: Later) -> None:
        if len(self.pending) >= MAX_PENDING_ACKS:
            _answer(later, Error("unavailable", "too many acknowledgements waiting; retry", msg.id))
            return
        rid = next(self._ids)
        request = {
            "rid": rid,
            "name": identity.name,
            "grants": identity.grants,
            "can_ack": identity.can_ack,
            "id": msg.id,
            "alarms": msg.alarms,
        }
        if not self.out.push(Kind.ACK, orjson.dumps(request)):
            _answer(later, Error("unavailable", "the alarm engine is not reachable; retry", msg.id))
            return
        self.pending[rid] = (later, msg.id, trio.current_time() + ACK_TIMEOUT_S)

    def _ack_reply(self, payload: bytes) -> None:
        reply = orjson.loads(payload)
        entry = self.pending.pop(reply["rid"], None)
        if entry is None:
            return  # answered 'unavailable' already
        later, ref, _ = entry
        if reply["ok"]:
            _answer(later, Ack("ack_alarm", ref, alarms=tuple(reply["alarms"])))
        else:
            _answer(later, Error(reply["code"], reply["message"], ref))

    async def expire_acks(self) -> None:
        while True:
            await trio.sleep(ACK_TIMEOUT_S / 5)
            now = trio.current_time()
            for rid, (later, ref, deadline) in list(self.pending.items()):
                if deadline < now:
                    del self.pending[rid]
                    _answer(
                        later, Error("unavailable", "the alarm engine did not answer; retry", ref)
                    )


def _answer(later: Later, reply: Ack | Error) -> None:
    write, life = later
    if not life.ending:  # nothing after a close frame; a stream gone writes nothing
        write(encode(reply))


async def run(sock: socket.socket) -> int:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    reader = Reader(stream)
    await stream.send_all(HEAD.pack(0, Kind.HELLO))  # imported: the sync may begin
    first = await reader.receive()
    if first is None or first[0] is not Kind.CONFIG:
        return 1
    setup: WorkerSetup = pickle.loads(first[1])  # from our own parent process
    logging.basicConfig(
        level=getattr(logging, setup.log_level.upper()),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {setup.index}]: %(message)s",
        stream=sys.stderr,
    )
    tune_malloc()
    gw = build(setup.cfg, epoch=setup.epoch, worker=setup.index)
    gw.store.on_accept = None  # a replica: nothing is decided here (see the module doc)
    gw.server.reuse_port = True
    if setup.listener_fd is not None:
        shared = socket.socket(fileno=setup.listener_fd)
        os.set_inheritable(setup.listener_fd, False)
        shared.setblocking(False)
        gw.server.given = {"public": shared}
    out = Outbox(OUTBOX_BYTES)
    replica = Replica(gw, out)
    gw.insight.forward_ack = replica.forward_ack
    gw.server.ready_checks["authority"] = replica.ready
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.run, stream)
        await nursery.start(gw.looplag.run)
        nursery.start_soon(replica.expire_acks)
        nursery.start_soon(replica.beat)
        nursery.start_soon(_signals, replica, nursery)
        await replica.follow(reader, nursery)
        log.info("the parent closed the channel: stopping")
        replica.stop(nursery)
    return 0


async def _signals(replica: Replica, nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: stopping gracefully", signal.Signals(signum).name)
            replica.stop(nursery)
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    try:
        code: int = trio.run(run, sock)
    except BaseException as exc:
        message = user_error(exc)  # one line for what a person can fix (a port in use)
        if message is None or isinstance(exc, KeyboardInterrupt):
            raise
        log.error("worker cannot serve: %s; exiting (the parent restarts it)", message)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
