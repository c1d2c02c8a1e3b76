"""The fan-out: which sessions exist, and the loops that feed and police them.

The session registry, the tick loop that pumps due frames into every session, the
sweep loop (slow screens, timers, stale topics), and the per-tick framing caches that
build each shared frame once for every screen."""

from __future__ import annotations

import logging
import math

import trio

from ..clock import Clock
from ..config import ServerConfig
from ..core import disconnect as dc
from ..core.hub import Hub
from ..core.state import StateStore
from ..log import RateLimitedLog
from ..memory import freeze_survivors
from ..metrics import Metrics, observe_many
from .deflate import deflate_frame, deflate_frame_steps
from .lifecycle import ADMITTED, LifecycleError
from .session import StreamSession
from .sockio import text_frame_header
from .stats import ServerStats

__all__ = ["SWEEP_INTERVAL_S", "FanOut", "FrameCache"]

log = logging.getLogger("gateway.server")

SWEEP_INTERVAL_S = 0.5
FREEZE_INTERVAL_S = 0.05  # what lived this long is long-lived (memory.py)
PUMP_BATCH = 200  # sessions pumped (or closed at shutdown) between two checkpoints
#: or bytes written by them (8 MiB, the join snapshots of five screens, took 4 to 8 ms
#: on loopback, where a write also runs the receiver's kernel work)
PUMP_BYTES = 1 << 20
#: or time spent on them; every loop here checkpoints at least this often (the loop-lag
#: budget is p99 <= 10 ms, and the MQTT reader, the hub's slices and the sessions'
#: reads may each run one such turn before a late timer gets its own)
SLICE_S = 0.001
AGES_STEP = 500  # data-age samples observed between two checkpoints (~1 us each)
STALE_STEP = 250  # silent topics a sweep looks at between two looks at the clock
STALE_SLICES = 40  # and a sweep marks at most 40 x 250 stale (the rest: the next one)
#: topics a tick whose latency is observed (evenly spread over the tick's topics): the
#: two histograms cost ~1.5 us an observation, 0.15 core at 50,000 topic changes a second
LATENCY_SAMPLES = 256


#: bytes of framed/compressed frames each cache keeps (a 10,000-device `#` tick frame
#: is ~100 KB raw, ~17 KB compressed: a ring of 16 ticks is well inside)
FRAMED_BYTES = 16 << 20


class FrameCache:
    """Bytes built from a frame (framed, compressed, an SSE event), keyed by the frame
    object. Keys are ``id(frame)`` with the frame kept in the entry, so an id cannot be
    reused while its entry lives; two generations bound the bytes held (with the
    frames they keep alive)."""

    __slots__ = ("_old", "_young", "bytes", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._young: dict[int, tuple[bytes, bytes]] = {}
        self._old: dict[int, tuple[bytes, bytes]] = {}

    def get(self, frame: bytes) -> bytes | None:
        entry = self._young.get(id(frame))
        if entry is not None and entry[0] is frame:
            return entry[1]
        entry = self._old.get(id(frame))
        if entry is not None and entry[0] is frame:
            self.put(frame, entry[1])  # still in use: keep it young
            return entry[1]
        return None

    def put(self, frame: bytes, data: bytes) -> None:
        if self.bytes > self.limit // 2:
            self._old, self._young, self.bytes = self._young, {}, 0
        self._young[id(frame)] = (frame, data)
        self.bytes += len(frame) + len(data)


class FanOut:
    """Every open stream, and the loops that feed and police them."""

    def __init__(
        self,
        cfg: ServerConfig,
        store: StateStore,
        hub: Hub,
        clock: Clock,
        stats: ServerStats,
        rlog: RateLimitedLog,
        metrics: Metrics | None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.hub = hub
        self.clock = clock
        self.stats = stats
        self.log = rlog
        self.metrics = metrics
        self._framed = FrameCache(FRAMED_BYTES)
        self._framed_z = FrameCache(FRAMED_BYTES)
        #: large join snapshots, compressed between the tick's slices and kept while
        #: the hub may hand them out (a group's join serves for a few ticks)
        self._join_z: dict[int, tuple[bytes, bytes]] = {}
        self._sse_events = FrameCache(FRAMED_BYTES)
        #: the last shared frame framed (plain, compressed) and its bytes: the screens of
        #: one group are pumped one after the other and are all handed the same frame
        self._last: tuple[bytes, bytes] = (b"", b"")
        self._last_z: tuple[bytes, bytes] = (b"", b"")
        self.sessions: set[StreamSession] = set()  # every registered stream
        self._by_sub: dict[int, StreamSession] = {}  # attached ones, by subscriber id
        self.compressing = 0  # attached ones with permessage-deflate
        self._turn_ends = 0.0  # when the tick loop's compressing turn must checkpoint
        #: the tick loop is compressing frames the hub has just built; pumps asked
        #: for meanwhile wait in ``_deferred`` (see :meth:`pump_later`)
        self._warming = False
        self._deferred: list[StreamSession] = []
        #: set once shutdown began: new streams are closed at once (1012) and the
        #: gateway reports itself not ready
        self.stopping = False
        self._drained = trio.Event()

    # -- registry ------------------------------------------------------------------------

    def register(self, session: StreamSession) -> None:
        """A stream that passed admission (ADMITTED); counted as opened."""
        if session.life.state is not ADMITTED:
            raise LifecycleError(f"registering a stream that is {session.life.state.name}")
        self.stats.connections_opened += 1
        self.sessions.add(session)
        self.stats.peak_connections = max(self.stats.peak_connections, len(self.sessions))
        if self.stopping:
            session.close(dc.SHUTDOWN)

    def attach(self, session: StreamSession) -> None:
        assert session.sub is not None
        self._by_sub[session.sub.id] = session
        if session.compressed:
            self.compressing += 1

    def detach(self, session: StreamSession) -> None:
        sub = session.sub
        attached = sub is not None and self._by_sub.pop(sub.id, None) is not None
        if attached and session.compressed:
            self.compressing -= 1
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.disconnects[session.reason or "error"] += 1
        if self.stopping and not self.sessions:
            self._drained.set()

    def pump_later(self, session: StreamSession) -> bool:
        """Take over a pump asked for outside the tick loop while that loop compresses
        the frames the hub built in its current step (it checkpoints between them):
        a compressed session would be handed those frames not yet compressed and
        deflate them itself, in its own step. The tick loop pumps it as soon as they
        are done. Returns whether it took the pump over."""
        if not self._warming or not session.compressed:
            return False
        self._deferred.append(session)
        return True

    def _session_failed(self, session: StreamSession) -> None:
        self.stats.internal_errors += 1
        log.exception("a session failed in the tick or sweep loop; dropping it")
        try:
            session.abort("error")
        except Exception:
            log.exception("and dropping it failed too")

    async def close_all(self) -> None:
        """Shutdown: tell every stream to reconnect (1012) and give them
        ``shutdown_timeout_s`` to go."""
        self.stopping = True
        for i, session in enumerate(list(self.sessions), 1):
            session.close(dc.SHUTDOWN)
            if i % PUMP_BATCH == 0:
                await trio.lowlevel.checkpoint()
        if self.sessions:
            with trio.move_on_after(self.cfg.shutdown_timeout_s):
                await self._drained.wait()
        if self.sessions:
            log.warning(
                "shutdown: %d connections still open at the deadline; dropping them",
                len(self.sessions),
            )
        else:
            log.info("shutdown: every client was told to reconnect (1012)")

    # -- framing, once per tick ----------------------------------------------------------

    def framed(self, frame: bytes, compressed: bool = False, shared: bool = True) -> bytes:
        """``frame`` as a WebSocket text frame, deflated if ``compressed``. A shared
        frame is framed (and compressed) once for every screen, whether it is handed
        out in its own tick or later to a screen catching up (the caches outlive a
        tick, bounded in bytes); one screen's own frame is not kept."""
        last = self._last_z if compressed else self._last
        if last[0] is frame:
            return last[1]  # the common case: the frame the previous screen was given
        if compressed:
            entry = self._join_z.get(id(frame))
            if entry is not None and entry[0] is frame:
                return entry[1]
        cache = self._framed_z if compressed else self._framed
        data = cache.get(frame)
        if data is None:
            data = deflate_frame(frame) if compressed else text_frame_header(len(frame)) + frame
            if shared:
                cache.put(frame, data)
        if shared:
            if compressed:
                self._last_z = (frame, data)
            else:
                self._last = (frame, data)
        return data

    def sse_event(self, frame: bytes, shared: bool = True) -> bytes:
        """``frame`` as an SSE event, built once for every stream (as :meth:`framed`
        does for WebSocket frames)."""
        data = self._sse_events.get(frame)
        if data is None:
            data = b"data: " + frame + b"\n\n"
            if shared:
                self._sse_events.put(frame, data)
        return data

    # -- loops -----------------------------------------------------------------------------

    async def tick_loop(self) -> None:
        """Tick at ``tick_hz`` while there is work; sleep while nothing changes."""
        interval = 1.0 / self.cfg.tick_hz
        hub = self.hub
        by_sub = self._by_sub
        work = trio.Event()

        def wake() -> None:
            work.set()

        self.store.on_change = wake
        hub.on_work = wake
        next_at = last = -math.inf
        while True:
            quiet = hub.idle
            if quiet:
                await work.wait()
                work = trio.Event()
                # The first change after a quiet spell goes out at once, but never
                # sooner than one interval after the previous tick: with sparse
                # changes the hub goes idle after every tick, and waking it at each
                # change would tick (and send) far more often than tick_hz.
                next_at = max(last + interval, trio.current_time())
            else:
                next_at += interval
                now = trio.current_time()
                if next_at < now - interval:
                    next_at = now  # fell behind (overload): skip ticks rather than burst
            await trio.sleep_until(next_at)
            start = last = trio.current_time()
            if self._join_z:  # keep the joins the hub may still hand out
                live = {id(f) for frames in hub.live_joins() for f in frames}
                self._join_z = {k: v for k, v in self._join_z.items() if k in live}
            compress, warmed, warmed_frames = self.cfg.compression, 0, 0
            # bounded work between checkpoints: the hub yields after each slice of
            # its tick, and the woken sessions are pumped in batches
            # (in pumps, in bytes handed to the kernel, since join snapshots are large,
            # and in time, since a lagging screen's take coalesces up to 4 slices)
            stats = self.stats
            for woken in hub.tick_steps(start, after_quiet=quiet):
                self._warming = True
                try:
                    if compress and warmed < len(hub.tick_joins):
                        warmed = await self._compress_joins(warmed)
                    if self.compressing and warmed_frames < len(hub.tick_frames):
                        warmed_frames = await self._compress_frames(warmed_frames)
                finally:
                    self._warming = False
                if self._deferred:
                    deferred, self._deferred = self._deferred, []
                    woken = [s.sub for s in deferred if s.sub is not None] + woken
                pumped, sent, since = 0, stats.bytes_sent, trio.current_time()
                for sub in woken:
                    session = by_sub.get(sub.id)
                    if session is not None:
                        try:
                            session.pump(start)
                        except Exception:  # one session's bug must not stop every screen
                            self._session_failed(session)
                    pumped += 1
                    if (
                        pumped >= PUMP_BATCH
                        or stats.bytes_sent - sent >= PUMP_BYTES
                        or (not pumped & 7 and trio.current_time() - since >= SLICE_S)
                    ):  # the clock every 8 pumps: ~0.3 us each, and a pump is ~20 us
                        await trio.lowlevel.checkpoint()
                        pumped, sent, since = 0, stats.bytes_sent, trio.current_time()
                await trio.lowlevel.checkpoint()
            self.stats.ticks += 1
            if self.metrics is not None:
                await self._observe_tick(start)

    async def _compress_joins(self, done: int) -> int:
        """Compress the large join snapshots the hub built since ``done``, between
        checkpoints, before the screens waiting on them are pumped: the first
        screen's pump would otherwise compress a whole snapshot in one go (8.6 MB in
        38 ms of CPU at 50,000 topics). Returns how many joins are done."""
        joins = self.hub.tick_joins
        self._turn_ends = trio.current_time() + SLICE_S
        while done < len(joins):
            for frame in joins[done]:
                if id(frame) not in self._join_z:
                    self._join_z[id(frame)] = (frame, await self._deflate(frame))
            done += 1
        return done

    async def _compress_frames(self, done: int) -> int:
        """Compress the tick frames the hub built since ``done`` (while screens with
        permessage-deflate are attached), with checkpoints between frames and within
        large ones: else the first screen's pump compresses them, and a screen taking
        several (catching up, joining) would compress them all in one go (measured:
        ~50 ms in one pump at 10,000 devices). Returns how many frames are done."""
        frames = self.hub.tick_frames
        cache = self._framed_z
        self._turn_ends = trio.current_time() + SLICE_S
        while done < len(frames):
            frame = frames[done]
            done += 1
            if cache.get(frame) is None:
                cache.put(frame, await self._deflate(frame))
        return done

    async def _deflate(self, frame: bytes) -> bytes:
        """:func:`deflate_frame` with a checkpoint whenever the turn's ``SLICE_S`` is
        spent, and within a large frame every 64 KiB of it."""
        data = None
        for data in deflate_frame_steps(frame):
            if data is None or trio.current_time() >= self._turn_ends:
                await trio.lowlevel.checkpoint()
                self._turn_ends = trio.current_time() + SLICE_S
        assert data is not None
        return data

    async def _observe_tick(self, start: float) -> None:
        m = self.metrics
        assert m is not None
        m.tick_seconds.observe(trio.current_time() - start)
        states = self.hub.tick_states
        if states:
            wall = self.clock.wall()
            sample = list(states.values())
            if len(sample) > LATENCY_SAMPLES:
                sample = sample[:: -(-len(sample) // LATENCY_SAMPLES)]
            observe_many(
                m.device_to_send,
                [max(0.0, wall - st.device_ts) for st in sample if st.device_ts is not None],
            )
            observe_many(m.ingest_to_send, [max(0.0, wall - st.changed_at) for st in sample])
        await trio.lowlevel.checkpoint()

    async def freeze_loop(self) -> None:
        """A full collection whose survivors are frozen (memory.py), every
        ``FREEZE_INTERVAL_S``: it walks what was allocated since the previous one, so
        the pause grows with the interval (in a wave of 2,000 joining screens, once
        every 0.5 s: up to 30 ms; every 0.1 s: up to 8 ms, and 1.6 to 1.9 % of the
        loop-lag samples over 10 ms against 0.5 to 1.2 % every 0.05 s, three
        interleaved pairs of ``bench/hub_stalls_bench.py --only joinwave --pin``)."""
        while True:
            await trio.sleep(FREEZE_INTERVAL_S)
            freeze_survivors()

    async def sweep_loop(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            now = self.clock.mono()
            wall = self.clock.wall()
            ages: list[float] | None = [] if self.metrics is not None else None
            # bounded work between checkpoints: thousands of screens are walked twice
            for found in self.hub.find_slow_steps(now, ages):
                for sub, why in found:
                    session = self._by_sub.get(sub.id)
                    if session is not None:
                        self.log.limited("slow", "closing slow subscriber %s (%s)", session.ip, why)
                        if why == "stalled":
                            self.stats.send_failure("stalled")
                        # a stalled screen's close frame waits behind the data it does not
                        # read: it gets it only if it reads within close_timeout_s
                        session.close(dc.SLOW, f"slow subscriber: {why}")
                await trio.lowlevel.checkpoint()
            if ages and self.metrics is not None:
                for i in range(0, len(ages), AGES_STEP):
                    observe_many(self.metrics.subscriber_data_age, ages[i : i + AGES_STEP])
                    await trio.lowlevel.checkpoint()
            # a session's timers may send (a heartbeat Ping): 200 sessions or 1 ms a turn
            since = trio.current_time()
            for i, session in enumerate(list(self.sessions), 1):
                try:
                    session.check_timers(now, wall)
                except Exception:
                    self._session_failed(session)
                if i % PUMP_BATCH == 0 or (not i & 15 and trio.current_time() - since >= SLICE_S):
                    await trio.lowlevel.checkpoint()
                    since = trio.current_time()
            for _ in range(STALE_SLICES):  # the devices of a whole site may fall silent
                self.store.sweep_stale(wall, max_checks=STALE_STEP)
                await trio.lowlevel.checkpoint()
                if not self.store.stale_due(wall):
                    break
