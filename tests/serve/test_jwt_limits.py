"""JWT limits: an optional maximum lifetime, a cap on grants and on the token's size."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.auth import Authenticator, AuthError
from gateway.config import AuthConfig

from .rawws import RawWs
from .test_security import SECRET, hs

LIMITED = AuthConfig(
    mode="jwt", jwt_secret=SECRET, jwt_max_lifetime_s=3600, max_grants=4, max_token_bytes=1024
)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "wall", "iat": now, "exp": now + 600, "topics": ["a/#"]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def refusal(cfg: AuthConfig, token: str) -> str | None:
    try:
        Authenticator(cfg).verify(token, time.time())
    except AuthError as err:
        return err.reason
    return None


def test_the_limits_refuse_what_goes_over_them_and_accept_the_rest() -> None:
    now = int(time.time())
    assert refusal(LIMITED, hs(claims())) is None
    assert refusal(LIMITED, hs(claims(topics=["a/1", "a/2", "a/3", "a/4"]))) is None
    assert refusal(LIMITED, hs(claims(exp=now + 9999 * 86400))) == "lifetime"  # year 9999-ish
    assert refusal(LIMITED, hs(claims(iat=None, exp=now + 7200))) == "lifetime"
    assert refusal(LIMITED, hs(claims(iat=now - 7000, exp=now + 600))) == "lifetime"
    assert refusal(LIMITED, hs(claims(topics=[f"a/{i}" for i in range(5)]))) == "grants"
    assert refusal(LIMITED, hs(claims(pad="x" * 2000))) == "malformed"  # too long
    unlimited = AuthConfig(mode="jwt", jwt_secret=SECRET)
    assert refusal(unlimited, hs(claims(exp=now + 9999 * 86400))) is None  # 0: any lifetime
    assert refusal(unlimited, hs(claims(topics=[f"a/{i}" for i in range(257)]))) == "grants"


@pytest.mark.parametrize(
    "over",
    [
        {"exp": int(time.time()) + 10 * 86400},
        {"topics": [f"a/{i}" for i in range(5)]},
        {"pad": "x" * 2000},
    ],
)
async def test_a_token_over_the_limits_gets_401_before_the_upgrade(
    gateway_factory: Callable[..., Any], over: dict[str, Any]
) -> None:
    gw: Gateway = await gateway_factory(
        auth={
            "mode": "jwt",
            "jwt_secret": SECRET,
            "jwt_max_lifetime_s": 3600.0,
            "max_grants": 4,
            "max_token_bytes": 1024,
        }
    )
    ws = await RawWs.connect(gw.port, path=f"/ws?access_token={hs(claims(**over))}")
    ws.close()
    assert ws.status == 401
    ws = await RawWs.connect(gw.port, path=f"/ws?access_token={hs(claims())}")
    ws.close()
    assert ws.status == 101
