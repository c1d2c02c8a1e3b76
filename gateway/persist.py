"""Checkpoints of the state on disk, and the epoch over a restart.

Files in ``[persist] state_dir``:

* ``state.ckpt``: the last checkpoint (format: core/snapshotfile.py). Written every
  ``interval_s`` while the state changes, and once more at a graceful shutdown,
  always atomically: ``state.ckpt.tmp``, fsync, rename over ``state.ckpt``, fsync
  the directory. A kill at any moment leaves the previous checkpoint whole.
* ``clean``: written only after the final checkpoint of a graceful shutdown, which
  runs after every client was closed (1012), so that checkpoint holds every change
  any client has seen. It names the checkpoint (epoch, change count, CRC).
* ``state.ckpt.bad-<reason>-<time>``: a checkpoint that could not be used at start,
  moved aside (never deleted) for a person to look at.
* ``lock``: locked (``flock``) by the gateway that uses the directory, for its whole
  run, and holding its pid. A second gateway given the same directory refuses to
  start, naming that pid: two gateways on one directory restored each other's
  fleets, took over each other's epochs and broke each other's writes (found by an
  outside check).

Rules at start:

* The epoch is kept only if ``clean`` names the checkpoint found; ``clean`` is then
  removed (and the directory fsynced) before serving, so a crash later in this run
  cannot reuse the epoch. Otherwise (a crash, a kill, a failed final checkpoint)
  the topics are restored under a new epoch, and the log says so: every screen
  then gets snapshots, and no delta can be applied to the wrong base.
* Restored topics keep their last receive time and learned reporting interval
  (store.restore, the honest-freshness rule): a topic with a stale limit (a
  ``stale_after`` rule or a learned interval) is stale only once its device has
  been silent for that limit since it last spoke, as if the gateway had never
  stopped, so a graceful restart by itself sends no delta; a topic with no known
  limit (a device that spoke once) is marked stale at once; a stale topic stays
  stale; ``$`` topics (alarms) come back as they were. If the data source is down
  at start, the ingest marks every device topic stale as it would in any outage.
* A truncated, corrupt, future-version or unreadable checkpoint is logged (one line
  naming the file and the reason), counted, moved aside, and the gateway starts
  empty. If it cannot be moved aside, no checkpoint is written in this run, so it
  is never overwritten.
* A failed write (full disk, read-only directory) is logged, counted by reason, and
  serving goes on; the next interval tries again.

Further parts of the state (alarm states, history buffers) join the checkpoint as
sections of their own: ``Persister.add_section(name, Section(encode, restore))``
before the gateway starts. ``encode`` yields the payload in bounded chunks (the loop
gets a checkpoint between chunks); ``restore`` gets the payload at start, after the
topics and before serving, and may return an iterator of bounded steps. A section
in the file that nobody registered is logged and skipped.

The event loop never waits on the disk: topics are encoded in slices of
``BATCH`` with a checkpoint between slices, and the CRC, the writes and the fsyncs
run in a worker thread. From :meth:`Persister.load` to the end of
:meth:`Persister.restore` the cyclic garbage collector is paused, and what was
restored is then frozen (``gc.freeze``): a full collection over a million freshly
restored objects (100,000 topics with chart history) stalled the loop for 0.3 to
0.4 s, and these objects live as long as the process (they are still freed by
reference counting when replaced).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import trio

from .config import PersistConfig
from .core import snapshotfile
from .core.state import StateStore, TopicState
from .log import RateLimitedLog

__all__ = ["FAILURE_REASONS", "LOAD_REASONS", "Loaded", "PersistStats", "Persister", "Section"]

log = logging.getLogger("gateway.persist")

CHECKPOINT = "state.ckpt"
CLEAN = "clean"
LOCK = "lock"
BATCH = 500  # topics encoded or restored between two checkpoints of the event loop

#: why a checkpoint could not be written
FAILURE_REASONS = ("disk_full", "read_only", "permission", "io_error", "blocked")
#: why a checkpoint found at start could not be used
LOAD_REASONS = ("truncated", "corrupt", "version", "unreadable")


@dataclass
class PersistStats:
    checkpoints: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    bad_files: collections.Counter[str] = field(default_factory=collections.Counter)
    last_success: float = 0.0  # wall clock
    last_duration_s: float = 0.0
    last_bytes: int = 0
    restored_topics: int = 0
    epoch_kept: bool = False


@dataclass
class Loaded:
    """What the last run left: ``epoch`` is None unless it may be kept."""

    epoch: str | None = None
    changes: int = 0
    states: list[TopicState] = field(default_factory=list)
    sections: dict[str, memoryview] = field(default_factory=dict)  # the further ones


@dataclass(frozen=True)
class Section:
    """A further part of the state in the checkpoint (the extension point)."""

    encode: Callable[[], Iterator[bytes]]  # the payload, in bounded chunks
    #: at start, before serving; may return an iterator that does the work in
    #: bounded steps (the loop gets a checkpoint after each)
    restore: Callable[[memoryview], Iterator[object] | None]


def _reason(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "disk_full"
    if err.errno == errno.EROFS:
        return "read_only"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    return "io_error"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, chunks: list[bytes]) -> int:
    """temporary file, fsync, rename, fsync the directory (in a worker thread)."""
    tmp = path.with_name(path.name + ".tmp")
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # our own partial file; frees the space it took
        raise
    _fsync_dir(path.parent)
    return size


def _assemble_and_write(
    path: Path, meta: dict[str, object], topics: list[bytes], extra: dict[str, list[bytes]]
) -> tuple[int, int]:
    head, body = snapshotfile.assemble(meta, topics, extra)
    crc = snapshotfile.body_crc(head)
    return _write_atomic(path, [head, *body]), crc


class Persister:
    def __init__(self, cfg: PersistConfig, wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.state_dir)
        self.path = self.dir / CHECKPOINT
        self.stats = PersistStats()
        self.log = RateLimitedLog(log)
        self._wall = wall
        self._lock = trio.Lock()
        self._blocked = False  # a bad file is still in the way: never overwrite it
        self._written_changes = -1
        self._last: tuple[str, int, int] = ("", 0, 0)  # epoch, changes, CRC last written
        self.sections: dict[str, Section] = {}
        self._gc_was_enabled = False
        self._lock_fd: int | None = None

    def add_section(self, name: str, section: Section) -> None:
        if name in ("meta", "topics") or name in self.sections:
            raise ValueError(f"checkpoint section {name!r} exists")
        self.sections[name] = section

    # -- start -----------------------------------------------------------------------

    async def load(self) -> Loaded:
        """Read the last run's checkpoint and decide the epoch (before the store exists).
        Pauses the garbage collector until :meth:`restore` (which must follow)."""
        try:
            await trio.to_thread.run_sync(lambda: self.dir.mkdir(parents=True, exist_ok=True))
        except OSError as err:
            self.stats.failures[_reason(err)] += 1
            log.error("persist: cannot create state directory %s: %s", self.dir, err.strerror)
            return Loaded()
        await trio.to_thread.run_sync(self._take_lock)  # or OSError(EBUSY): do not start
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            data = await trio.to_thread.run_sync(self.path.read_bytes)
        except FileNotFoundError:
            log.info("persist: no checkpoint in %s; starting empty", self.dir)
            return Loaded()
        except OSError as err:
            await self._move_aside("unreadable", err.strerror or str(err))
            return Loaded()
        states: list[TopicState] = []
        try:
            ckpt = await trio.to_thread.run_sync(snapshotfile.parse, data)
            del data
            for _ in snapshotfile.decode_topics(ckpt.sections["topics"], states, BATCH):
                await trio.lowlevel.checkpoint()
        except snapshotfile.CheckpointError as err:
            await self._move_aside(err.reason, str(err))
            return Loaded()
        kept = await self._consume_clean_marker(ckpt)
        self.stats.epoch_kept = kept
        if kept:
            log.info(
                "persist: restoring %d topics from %s (clean shutdown): epoch %s kept; "
                "topics go stale on their own deadlines",
                len(states),
                self.path,
                ckpt.epoch,
            )
        else:
            log.warning(
                "persist: restoring %d topics from %s, but the last run did not end with a "
                "clean shutdown (no matching %s marker): new epoch (was %s); every screen "
                "gets snapshots",
                len(states),
                self.path,
                CLEAN,
                ckpt.epoch,
            )
        extra = {name: ckpt.sections[name] for name in ckpt.unknown}
        return Loaded(ckpt.epoch if kept else None, ckpt.changes, states, extra)

    def _take_lock(self) -> None:
        try:
            fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a read-only directory: persistence fails as it would
            log.warning("persist: cannot lock %s: %s", self.dir / LOCK, err.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OSError(
                errno.EBUSY,
                f"state directory {self.dir} is in use by another gateway (pid {holder}): "
                "give each gateway its own ([persist] state_dir, --state-dir)",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Unlock the directory (the end of this gateway's run; a process's end does
        it too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _consume_clean_marker(self, ckpt: snapshotfile.Checkpoint) -> bool:
        marker = self.dir / CLEAN
        try:
            raw = await trio.to_thread.run_sync(marker.read_bytes)
        except OSError:
            return False
        try:
            info = orjson.loads(raw)
            matches: bool = info == {"epoch": ckpt.epoch, "changes": ckpt.changes, "crc": ckpt.crc}
        except orjson.JSONDecodeError:
            matches = False

        def remove() -> None:
            marker.unlink()
            _fsync_dir(self.dir)

        try:
            await trio.to_thread.run_sync(remove)
        except OSError as err:
            # kept, the marker would let a later crash reuse this epoch: a new one
            self.stats.failures[_reason(err)] += 1
            log.error("persist: cannot remove %s (%s): taking a new epoch", marker, err.strerror)
            return False
        return matches

    async def _move_aside(self, reason: str, detail: str) -> None:
        self.stats.bad_files[reason] += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._wall()))
        aside = self.path.with_name(f"{CHECKPOINT}.bad-{reason}-{stamp}")

        def move() -> None:
            os.rename(self.path, aside)
            _fsync_dir(self.dir)

        try:
            await trio.to_thread.run_sync(move)
        except OSError as err:
            self._blocked = True
            log.error(
                "persist: checkpoint %s unusable (%s: %s) and cannot be moved aside (%s); "
                "starting empty, and writing no checkpoint in this run so it is kept",
                self.path,
                reason,
                detail,
                err.strerror,
            )
            return
        log.error(
            "persist: checkpoint %s unusable (%s: %s); moved aside to %s; starting empty",
            self.path,
            reason,
            detail,
            aside,
        )

    async def restore(self, store: StateStore, loaded: Loaded) -> list[str]:
        """Put the loaded topics into the (new, empty) store, in slices, before serving,
        then the further sections. Returns the topics the restore marked stale.

        ``store.on_accept`` (alarms, history) is not called meanwhile: the alarm topics
        are not back yet, so an alarm raised now would take the place of its restored
        topic. The caller lets the alarm engine see the returned topics afterwards."""
        try:
            return await self._restore(store, loaded)
        finally:
            gc.freeze()  # long-lived: no full collection scans them again
            if self._gc_was_enabled:
                gc.enable()

    async def _restore(self, store: StateStore, loaded: Loaded) -> list[str]:
        store.changes = max(store.changes, loaded.changes)
        restored = 0
        on_accept, store.on_accept = store.on_accept, None
        try:
            for i, st in enumerate(loaded.states):
                restored += store.restore(st)
                if i % BATCH == BATCH - 1:
                    await trio.lowlevel.checkpoint()
        finally:
            store.on_accept = on_accept
        if restored < len(loaded.states):
            log.warning(
                "persist: %d topics of the checkpoint not restored (state.max_topics is %d)",
                len(loaded.states) - restored,
                store.max_topics,
            )
        loaded.states = []
        for name, payload in loaded.sections.items():
            section = self.sections.get(name)
            if section is None:
                log.warning("persist: %s: section %r is not known here; skipped", self.path, name)
            else:
                steps = section.restore(payload)
                for _ in steps or ():
                    await trio.lowlevel.checkpoint()
        loaded.sections = {}
        # nobody is subscribed yet: nothing is waiting for these changes
        marked = store.drain_changed()
        self.stats.restored_topics = restored
        self._written_changes = store.changes if loaded.epoch else -1
        return marked

    # -- checkpoints -------------------------------------------------------------------

    async def run(
        self, store: StateStore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.cfg.interval_s)
            if store.changes != self._written_changes:
                await self.checkpoint(store)

    async def checkpoint(self, store: StateStore) -> bool:
        """Write one checkpoint; False (logged, counted) if it failed."""
        async with self._lock:
            return await self._checkpoint(store)

    async def _checkpoint(self, store: StateStore) -> bool:
        if self._blocked:
            self.stats.failures["blocked"] += 1
            self.log.limited("blocked", "persist: checkpoint skipped: %s is kept aside", self.path)
            return False
        began = trio.current_time()
        topics: list[bytes] = []
        count = 0
        for chunk in snapshotfile.encode_topics(store, BATCH):
            topics.append(chunk)
            count += chunk.count(b"\n")
            await trio.lowlevel.checkpoint()
        extra: dict[str, list[bytes]] = {}
        for name, section in self.sections.items():
            chunks = extra[name] = []
            for chunk in section.encode():
                chunks.append(chunk)
                await trio.lowlevel.checkpoint()
        changes = store.changes  # every topic encoded was changed at or before this
        meta = {
            "epoch": store.epoch,
            "changes": changes,
            "topics": count,
            "written_at": self._wall(),
        }
        try:
            size, crc = await trio.to_thread.run_sync(
                _assemble_and_write, self.path, meta, topics, extra
            )
        except OSError as err:
            reason = _reason(err)
            self.stats.failures[reason] += 1
            self.log.limited(
                "write", "persist: checkpoint to %s failed (%s): %s; serving goes on",
                self.path, reason, err.strerror or err,
            )  # fmt: skip
            return False
        self._written_changes = changes
        self._last = (store.epoch, changes, crc)
        s = self.stats
        s.checkpoints += 1
        s.last_success = self._wall()
        s.last_duration_s = trio.current_time() - began
        s.last_bytes = size
        return True

    async def final(self, store: StateStore) -> bool:
        """The last checkpoint of a graceful shutdown (every client is closed), then the
        clean marker that lets the next start keep the epoch."""
        async with self._lock:
            if not await self._checkpoint(store):
                log.error("persist: final checkpoint failed: the next start takes a new epoch")
                return False
            epoch, changes, crc = self._last
            marker = orjson.dumps({"epoch": epoch, "changes": changes, "crc": crc})
            try:
                await trio.to_thread.run_sync(_write_atomic, self.dir / CLEAN, [marker])
            except OSError as err:
                self.stats.failures[_reason(err)] += 1
                log.error("persist: cannot write %s (%s)", self.dir / CLEAN, err.strerror)
                return False
        log.info(
            "persist: final checkpoint %s: %d bytes in %.2f s; epoch %s is kept on restart",
            self.path,
            self.stats.last_bytes,
            self.stats.last_duration_s,
            epoch,
        )
        return True
