"""How often other tasks run while some work is awaited: the test of bounded work
between checkpoints (a walk in slices lets them run between its slices; a walk in
one step, never)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


async def others_turns_during(work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``work()``'s result, and how many turns another task got while it ran."""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = turns
        result = await work()
        during = turns - before
        nursery.cancel_scope.cancel()
    return result, during
