"""Fixtures for tests against a real gateway on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from gateway.app import Gateway, serve
from gateway.config import load_config


def make_config(**sections: dict[str, Any]) -> Any:
    server = {"port": 0, "admin_port": 0, **sections.pop("server", {})}
    return load_config(overrides={"server": server, **sections})


async def start_gateway(nursery: trio.Nursery, **sections: dict[str, Any]) -> Gateway:
    gw: Gateway = await nursery.start(serve, make_config(**sections))
    return gw


@pytest.fixture
async def gateway_factory(
    nursery: trio.Nursery,
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []

    async def factory(**sections: dict[str, Any]) -> Gateway:
        gw = await start_gateway(nursery, **sections)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.server.request_shutdown()


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Any]) -> Gateway:
    gw: Gateway = await gateway_factory()
    return gw


def url(gw: Gateway, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"
