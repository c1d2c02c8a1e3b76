"""The glibc malloc thresholds are fixed once the gateway serves (gateway/memory.py)."""

from __future__ import annotations

import gc
import subprocess
import sys

import trio

from tests.gw import start_gateway
from tests.serve.rawws import RawWs


def printed(code: str, env: dict[str, str] | None = None) -> list[str]:
    """What ``code`` prints in a new interpreter (the GC and malloc settings are the
    process's), split on whitespace."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.split()


def test_thresholds_are_set_and_the_environment_wins() -> None:
    code = "from gateway.memory import tune_malloc; print(tune_malloc(), tune_malloc())"
    assert printed(code) == ["True", "True"]  # glibc here: set once, then kept
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}
    assert printed(code, env) == ["False", "False"]  # the operator's setting is kept


def test_tune_gc_freezes_the_survivors_of_every_full_collection() -> None:
    code = (
        "import gc; from gateway.memory import tune_gc; tune_gc(); a = gc.get_freeze_count()\n"
        "keep = [[i] for i in range(5000)]; gc.collect(); b = gc.get_freeze_count()\n"
        "tune_gc(); print(a > 0, b - a >= 5000, gc.callbacks.count(gc.callbacks[-1]))"
    )
    assert printed(code) == ["True", "True", "1"]  # the callback is installed once


async def _screen(port: int, how: str, subscribed: trio.Event, go: trio.Event) -> None:
    ws = await RawWs.connect(port)
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    while "snapshot" not in (await ws.recv_frame())[1].decode():
        pass
    subscribed.set()
    await go.wait()
    if how == "clean":
        await ws.send_raw(RawWs.frame(b"\x03\xe8", opcode=8))
        await ws.close_code_at_end()
    elif how == "bad":  # a binary message: the gateway closes (1003)
        await ws.send_raw(RawWs.frame(b"\x00", opcode=2))
        await ws.close_code_at_end()
    ws.close()


async def test_screens_that_leave_leave_no_reference_cycle() -> None:
    """What tune_gc relies on: a screen's objects (session, hub subscriber, group member,
    trio tasks), frozen while it was connected, are freed by reference counting when it
    leaves, cleanly, abruptly or after a protocol error: none is left in a cycle that
    only the (frozen-out) cyclic collector could free."""
    hows = ["clean", "abrupt", "bad"] * 4
    async with trio.open_nursery() as nursery:
        gw = await start_gateway(nursery, simulator={"devices": 50, "rate_hz": 5.0})
        go = trio.Event()
        joined = [trio.Event() for _ in hows]
        async with trio.open_nursery() as screens:
            for how, ev in zip(hows, joined, strict=True):
                screens.start_soon(_screen, gw.port, how, ev, go)
            for ev in joined:
                await ev.wait()
            assert len(gw.server.fanout.sessions) == len(hows)
            gc.collect()
            gc.freeze()  # as tune_gc does: every screen's objects are frozen now
            go.set()
        with trio.fail_after(10):
            while gw.server.fanout.sessions:
                await trio.sleep(0.05)
        gc.unfreeze()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            ours = [o for o in gc.garbage if type(o).__module__.startswith(("gateway", "trio"))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        gw.server.request_shutdown()
    assert ours == []


def test_dead_cycles_are_collected_not_frozen() -> None:
    """gc.freeze would keep dead cycles forever: every freeze follows a collection.
    The cycles here are those paho-mqtt's topic matcher makes per message (a
    recursive closure) and self-referencing containers."""
    code = (
        "import gc; from gateway.memory import freeze_survivors, tune_gc\n"
        "class Mark: pass\n"
        "def matcher():\n"
        "    mark = Mark()\n"
        "    def rec(n): return mark if n == 0 else rec(n - 1)\n"
        "    return rec(3)\n"
        "def dead():\n"
        "    for _ in range(300):\n"
        "        m = Mark(); m.me = m; matcher()\n"
        "gc.disable(); dead(); tune_gc(); dead(); freeze_survivors()\n"
        "gc.unfreeze(); gc.set_debug(gc.DEBUG_SAVEALL); gc.collect()\n"
        "print(sum(type(o) is Mark for o in gc.garbage))"
    )
    assert printed(code) == ["0"]


def test_survivors_are_frozen_only_once_gc_is_tuned() -> None:
    code = (
        "import gc; from gateway.memory import GC_THRESHOLDS, freeze_survivors, tune_gc\n"
        "t0 = gc.get_threshold(); before = freeze_survivors(); f0 = gc.get_freeze_count()\n"
        "tune_gc(); a = gc.get_freeze_count(); keep = [[i] for i in range(3000)]\n"
        "print(before, f0 == 0, freeze_survivors(), gc.get_freeze_count() - a >= 3000,"
        " gc.get_threshold() == GC_THRESHOLDS != t0)"
    )
    # not tuned (a test, an embedding program): nothing frozen, the thresholds kept
    assert printed(code) == ["False", "True", "True", "True", "True"]


def test_a_build_in_young_only_runs_no_full_collection_and_ends_frozen() -> None:
    """Full collections walk every object not frozen: during a large build served in
    slices (the embedded fleet) they grew with it. Within ``young_only`` none runs
    (1,500,000 containers made outside it trigger one), not even the fan-out's
    periodic one, and what was built is frozen at the end."""
    code = (
        "import gc; from gateway.memory import GC_THRESHOLDS, freeze_survivors, tune_gc,"
        " young_only\n"
        "full = []\n"
        "gc.callbacks.append(lambda p, i: full.append(1) if p == 'stop'"
        " and i['generation'] == 2 else None)\n"
        "tune_gc(); full.clear(); f0 = gc.get_freeze_count(); keep = []\n"
        "with young_only():\n"
        "    for i in range(1_500_000): keep.append([i])\n"
        "    periodic = freeze_survivors()\n"
        "    inside = len(full)\n"
        "print(inside, periodic, gc.get_freeze_count() - f0 >= 1_500_000,"
        " gc.get_threshold() == GC_THRESHOLDS, freeze_survivors())"
    )
    assert printed(code) == ["0", "False", "True", "True", "True"]
