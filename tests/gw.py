"""Helpers to run a real gateway in-process on 127.0.0.1, port 0."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from gateway.app import Gateway, serve
from gateway.config import Config, load_config


def make_config(**sections: dict[str, Any]) -> Config:
    server = {"port": 0, "admin_port": 0, **sections.pop("server", {})}
    return load_config(overrides={"server": server, **sections})


async def start_gateway(nursery: trio.Nursery, **sections: dict[str, Any]) -> Gateway:
    if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        # virtual time: the lag sampler measures nothing there, and with an autojump
        # threshold each of its 10 ms wake-ups costs the threshold in real time
        sections["server"] = {"loop_lag_interval_s": 1.0, **sections.get("server", {})}
    gw: Gateway = await nursery.start(serve, make_config(**sections))
    return gw


def url(gw: Gateway, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"
