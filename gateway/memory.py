"""Memory settings for a long-running fan-out server: glibc malloc and the cyclic GC.

**malloc.** By default glibc raises its mmap threshold every time a large block is
freed, so the gateway's large and short-lived buffers (tick frames, join snapshots, socket reads)
soon come from the heap instead of their own mappings, and the heap fragments: RSS
crept up ~130 MiB an hour in the 10-minute soak while the Python heap (tracemalloc)
stayed flat. Fixing the thresholds (the MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ environment variables, set from inside) keeps RSS flat: the
same soak went from 78 to 82 MiB in its first minute and stayed there.

**The cyclic garbage collector.** CPython's full (generation 2) collection walks every
tracked container alive, so its pause grows with the state (topic states, chart
series, connections): a wave of 2,000 screens joining on 10,000 topics triggered full
collections of 0.4 to 0.66 s each, and they collected nothing. The gateway's own
objects make no cycles: topic states, groups and sessions are freed by reference
counting (tests/test_memory.py connects screens, drops them cleanly, abruptly and
after a protocol error, and finds none of their objects left in a cycle; a join wave
of 2,000 screens collected 0 objects in every generation). So once the gateway owns
the process, :func:`tune_gc` makes the collector a young-objects-only one: what
survives is frozen (``gc.freeze``: no collection walks it again) after every full
collection, and :func:`freeze_survivors`, which the fan-out calls every 0.05 s, runs
one: it walks only what was made since the previous one (frozen objects are not
walked), so it costs what the last tenth of a second allocated and kept (at 0.5 s, a
wave of 2,000 joining screens made pauses of 30 ms). A freeze must
follow a collection: ``gc.freeze`` moves dead cycles too, and some libraries make
them at a steady rate (paho-mqtt's topic matcher, a recursive closure, makes one per
received message: frozen uncollected, they would leak). Cycles among young objects
are still collected by every generation. The price: an object frozen while alive
that later becomes part of a reference cycle is freed only when the process ends;
none of the lifecycles tested makes one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["freeze_survivors", "tune_gc", "tune_malloc", "young_only"]

log = logging.getLogger("gateway")

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024
_done = False


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds (once per process); False elsewhere, or
    when the environment already sets them (the operator's choice wins)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1)
    ok = bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1) and ok
    _done = ok
    if not ok:
        log.info("glibc malloc thresholds could not be set; RSS may creep with fragmentation")
    return ok


def _freeze_after_full(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()  # the survivors are long-lived: no later collection walks them


_gc_tuned = False
#: generation thresholds once tuned: 700 allocations and 10 young collections as
#: CPython's defaults, then 100 (not 10) generation-1 collections for a full one (the
#: sweep runs one every 0.5 s anyway)
GC_THRESHOLDS = (700, 10, 100)


def tune_gc() -> None:
    """Collect and freeze what is alive now, and after every full collection (once
    per process)."""
    global _gc_tuned
    gc.set_threshold(*GC_THRESHOLDS)
    if _freeze_after_full not in gc.callbacks:
        gc.callbacks.append(_freeze_after_full)
    _gc_tuned = True
    gc.collect()  # frees what is dead, then freezes (_freeze_after_full)


def freeze_survivors() -> bool:
    """After :func:`tune_gc` (else nothing): a full collection, over what is not
    frozen yet, whose survivors are frozen; True if it ran (not within
    :func:`young_only`)."""
    if _gc_tuned and not _young_only:
        gc.collect()
        return True
    return False


_young_only = 0


@contextmanager
def young_only() -> Iterator[None]:
    """While a large long-lived structure is built in slices by a process that
    serves meanwhile (20,000 simulated devices): no full collection, then what is
    alive is frozen after a young one. A full collection walks every object not
    frozen, so during such a build each one grew with it (15 to 150 ms, and the next
    :func:`freeze_survivors` 0.35 s). The price: a cycle that died in the old
    generation during the build is frozen with the rest (none of the gateway's
    objects make cycles; see above). Nothing changes before :func:`tune_gc`."""
    global _young_only
    if not _gc_tuned:
        yield
        return
    _young_only += 1
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], 1 << 30)
    try:
        yield
    finally:
        _young_only -= 1
        if not _young_only:
            gc.collect(1)  # the young dead cycles (the build's objects are old by now)
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
