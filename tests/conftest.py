"""Shared test policy.

A test that needs something outside Python (mosquitto, prometheus, chromium, ...)
asks for it through :func:`require_binary`: on a developer machine a missing
dependency skips the test with the command that installs it; in CI (``CI=true``)
it fails, because a skipped test there would hide a broken set-up.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

# Property tests never assert speed: on a loaded CI machine a per-example deadline
# only produces flakes (the suite's own timeouts bound every test).
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def stop_process(proc) -> None:  # type: ignore[no-untyped-def]
    """Stop a process a test started: SIGTERM, 10 s to exit, then SIGKILL."""
    import trio

    if proc.returncode is None:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def require_binary(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if path is None and os.path.isabs(name) and os.access(name, os.X_OK):
        path = name
    if path:
        return path
    hint = f"{name} is missing: apt-get install {package or name} (make test installs it)"
    if in_ci():
        pytest.fail(hint, pytrace=False)
    pytest.skip(hint)


@pytest.fixture
async def mosquitto(tmp_path):  # type: ignore[no-untyped-def]
    from tests.broker import Mosquitto

    broker = Mosquitto(tmp_path / "mosquitto")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def gateway_factory(nursery):  # type: ignore[no-untyped-def]
    """Start gateways in the test's nursery; each is shut down at teardown."""
    from tests.gw import start_gateway

    started = []

    async def factory(**sections):  # type: ignore[no-untyped-def]
        gw = await start_gateway(nursery, **sections)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.server.request_shutdown()


@pytest.fixture
async def gateway(gateway_factory):  # type: ignore[no-untyped-def]
    return await gateway_factory()


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Soak tests run only when asked for (``make soak``: ``-m soak``), never by default."""
    if "soak" in (config.getoption("-m") or ""):
        return
    keep = [i for i in items if i.get_closest_marker("soak") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
