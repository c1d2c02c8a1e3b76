"""X-Forwarded-For is believed from trusted proxies only, for per-address limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import ConfigError, load_config
from gateway.serve.admission import forwarded_for
from tests.serve.rawws import RawWs

TRUSTED = frozenset({"127.0.0.1", "10.0.0.254"})


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (None, "127.0.0.1"),
        (b"10.0.0.9", "10.0.0.9"),
        (b"1.2.3.4, 10.0.0.9", "10.0.0.9"),  # the client may forge what is on the left
        (b"10.0.0.9, 10.0.0.254", "10.0.0.9"),  # a chain of trusted proxies
        (b"2001:db8::1", "2001:db8::1"),
        (b"garbage", "127.0.0.1"),
        (b"10.0.0.9, not-an-ip", "127.0.0.1"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_address(header: bytes | None, client: str) -> None:
    assert forwarded_for(header, "127.0.0.1", TRUSTED) == client


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_config(overrides={"server": {"trusted_proxies": ["nginx.local"]}})


async def test_per_address_limits_apply_to_the_forwarded_client(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(
        server={"trusted_proxies": ["127.0.0.1"], "max_connections_per_ip": 2}
    )
    a = [await RawWs.connect(gw.port, headers={"X-Forwarded-For": "10.0.0.1"}) for _ in range(3)]
    assert [w.status for w in a] == [101, 101, 503]
    b = await RawWs.connect(gw.port, headers={"X-Forwarded-For": "10.0.0.2"})
    assert b.status == 101  # another client behind the same proxy
    for w in [*a, b]:
        w.close()


async def test_the_header_is_ignored_from_anyone_else(gateway_factory: Callable[..., Any]) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections_per_ip": 2})
    a = [await RawWs.connect(gw.port, headers={"X-Forwarded-For": f"10.0.0.{i}"}) for i in range(3)]
    assert [w.status for w in a] == [101, 101, 503]  # all counted as 127.0.0.1
    for w in a:
        w.close()
