"""Handshake and session refusals: Origin, tokens, grants, sizes, rates, limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import Gateway
from gateway.client import GatewayClient

from .conftest import url
from .rawws import RawWs

SECRET = "s" * 40
AUD = "screens"
ISS = "https://idp.example"


def hs(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def good_claims(**over: Any) -> dict[str, Any]:
    claims = {
        "sub": "wall-1",
        "exp": int(time.time()) + 600,
        "aud": AUD,
        "iss": ISS,
        "topics": ["site/berlin/#"],
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


JWT_AUTH = {"mode": "jwt", "jwt_secret": SECRET, "jwt_audience": AUD, "jwt_issuer": ISS}


@pytest.fixture
async def jwt_gateway(gateway_factory: Callable[..., Any]) -> Gateway:
    gw: Gateway = await gateway_factory(auth=JWT_AUTH, server={"auth_timeout_s": 0.5})
    now = gw.clock.wall()
    gw.store.apply("site/berlin/p1", {"v": 1}, now)
    gw.store.apply("site/paris/p1", {"v": 2}, now)
    gw.store.apply("$SYS/load", {"v": 3}, now)
    return gw


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://evil.example", 403),
        ("http://127.0.0.1.evil.example", 403),
        ("null", 403),
        ("http://localhost:3000", 101),
        ("http://127.0.0.1:9999", 101),
        ("http://[::1]:9999", 101),
        ("http://localhost:1@evil.example", 403),  # userinfo: not an origin
        ("http://[::1]@evil", 403),
        ("http://localhost:3000/path", 403),
        (None, 101),  # non-browser clients send no Origin: allowed by default (documented)
    ],
)
async def test_origin_allowlist(gateway: Gateway, origin: str | None, status: int) -> None:
    headers = {"Origin": origin} if origin else {}
    ws = await RawWs.connect(gateway.port, headers=headers)
    ws.close()
    assert ws.status == status


async def test_own_origin_and_configured_origins(gateway_factory: Callable[..., Any]) -> None:
    gw: Gateway = await gateway_factory(
        server={"allowed_origins": ["https://wall.example"], "allow_missing_origin": False}
    )
    for origin, status in [
        (f"http://127.0.0.1:{gw.port}", 101),
        ("https://wall.example", 101),
        ("https://wall.example.evil", 403),
        (None, 403),
    ]:
        ws = await RawWs.connect(gw.port, headers={"Origin": origin} if origin else {})
        ws.close()
        assert ws.status == status, origin


def bad_tokens() -> list[tuple[str, str]]:
    now = int(time.time())
    return [
        ("garbage", "not.a.jwt"),
        ("expired", hs(good_claims(exp=now - 3600))),
        ("not_yet_valid", hs(good_claims(nbf=now + 3600))),
        ("wrong_audience", hs(good_claims(aud="other"))),
        ("prefix_issuer", hs(good_claims(iss=ISS + ".evil"))),
        ("missing_exp", hs(good_claims(exp=None))),
        ("wrong_signature", hs(good_claims(), key="x" * 40)),
        ("alg_none", jwt.encode(good_claims(), None, algorithm="none")),
        ("identity_with_wildcard", hs(good_claims(sub="a/#"))),
        ("identity_with_plus", hs(good_claims(sub="wall+1"))),
        ("identity_with_slash", hs(good_claims(sub="plant/wall"))),
        ("identity_with_nul", hs(good_claims(sub="wall\x00"))),
        ("bad_grant", hs(good_claims(topics=["a/#/b"]))),
    ]


@pytest.mark.parametrize(("case", "token"), bad_tokens(), ids=[c for c, _ in bad_tokens()])
async def test_bad_tokens_are_refused_before_the_upgrade(
    jwt_gateway: Gateway, case: str, token: str
) -> None:
    ws = await RawWs.connect(jwt_gateway.port, headers={"Authorization": f"Bearer {token}"})
    ws.close()
    assert ws.status == 401, case
    assert jwt_gateway.server.stats.internal_errors == 0


@pytest.mark.parametrize(("case", "token"), bad_tokens()[:3], ids=[c for c, _ in bad_tokens()[:3]])
async def test_bad_tokens_in_the_auth_message_close_with_4001(
    jwt_gateway: Gateway, case: str, token: str
) -> None:
    ws = await RawWs.connect(jwt_gateway.port)
    assert (await ws.recv_json())["auth_required"] is True
    await ws.send_json({"type": "auth", "token": token})
    with trio.fail_after(5):
        assert await ws.close_code_at_end() == 4001
    ws.close()


async def test_no_token_means_auth_message_within_the_deadline(jwt_gateway: Gateway) -> None:
    ws = await RawWs.connect(jwt_gateway.port)
    await ws.recv_json()
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    err = await ws.recv_json()
    assert (err["type"], err["code"]) == ("error", "unauthorized")
    with trio.fail_after(5):
        assert await ws.close_code_at_end() == 4002
    ws.close()


async def test_token_from_header_query_or_message_and_grants_limit_what_flows(
    jwt_gateway: Gateway,
) -> None:
    gw = jwt_gateway
    token = hs(good_claims())
    ws_q = await RawWs.connect(gw.port, path=f"/ws?access_token={token}")
    assert ws_q.status == 101
    assert (await ws_q.recv_json())["auth_required"] is False
    ws_q.close()
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    await ws.send_json({"type": "auth", "token": token})
    assert await ws.recv_json() == {"type": "ack", "op": "auth"}
    await ws.send_json({"type": "subscribe", "id": "x", "filters": ["site/paris/#"]})
    err = await ws.recv_json()
    assert (err["code"], err["ref"]) == ("forbidden", "x")
    ws.close()
    seen: list[str] = []
    client = GatewayClient(url(gw), ["#"], token=token, on_update=lambda m: seen.append(m.topic))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(5):
            await client.wait_until(lambda m: "site/berlin/p1" in m.topics)
        gw.store.apply("site/paris/p1", {"v": 20}, gw.clock.wall())
        gw.store.apply("$SYS/load", {"v": 30}, gw.clock.wall())
        gw.store.apply("site/berlin/p1", {"v": 10}, gw.clock.wall())
        with trio.fail_after(5):
            await client.wait_until(lambda m: m.topics["site/berlin/p1"].fields == {"v": 10})
        nursery.cancel_scope.cancel()
    assert set(seen) == {"site/berlin/p1"}
    assert set(client.mirror.topics) == {"site/berlin/p1"}


async def test_empty_grants_mean_no_topics(jwt_gateway: Gateway) -> None:
    ws = await RawWs.connect(
        jwt_gateway.port, headers={"Authorization": f"Bearer {hs(good_claims(topics=[]))}"}
    )
    await ws.recv_json()
    await ws.send_json({"type": "subscribe", "id": "s", "filters": ["#"]})
    assert (await ws.recv_json())["code"] == "forbidden"
    ws.close()


async def test_rs256_refuses_hs256_signed_with_the_public_key(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    gw: Gateway = await gateway_factory(
        auth={
            "mode": "jwt",
            "jwt_algorithms": ["RS256"],
            "jwt_public_key_file": str(tmp_path / "pub.pem"),
        }
    )
    claims = {"sub": "w", "exp": int(time.time()) + 60, "topics": ["#"]}
    good = jwt.encode(claims, key, algorithm="RS256")
    ws = await RawWs.connect(gw.port, headers={"Authorization": f"Bearer {good}"})
    ws.close()
    assert ws.status == 101
    # the classic key-confusion forgery: HS256 with the public key as the secret
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = b64(orjson.dumps(claims))
    sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    ws = await RawWs.connect(gw.port, headers={"Authorization": f"Bearer {head}.{body}.{sig}"})
    ws.close()
    assert ws.status == 401


async def test_bad_messages_get_errors_and_others_keep_being_served(gateway: Gateway) -> None:
    gw = gateway
    gw.store.apply("a", {"v": 1}, gw.clock.wall())
    other = GatewayClient(url(gw), ["#"])
    async with trio.open_nursery() as nursery:
        await nursery.start(other.run)
        ws = await RawWs.connect(gw.port)
        await ws.recv_json()
        await ws.send_raw(ws.frame(b"{not json"))
        assert (await ws.recv_json())["code"] == "bad_json"
        await ws.send_json({"type": "launch_missiles"})
        assert (await ws.recv_json())["code"] == "unknown_type"
        await ws.send_json({"type": "subscribe", "id": "s", "filters": ["a/#/b"]})
        assert (await ws.recv_json())["code"] == "bad_filter"
        await ws.send_raw(ws.frame(b"x" * 70_000))  # over the 64 KiB limit
        with trio.fail_after(5):
            assert await ws.close_code_at_end() == 1009
        ws.close()
        ws = await RawWs.connect(gw.port)
        await ws.recv_json()
        await ws.send_raw(ws.frame(b"\x00\x01", opcode=2))
        with trio.fail_after(5):
            assert await ws.close_code_at_end() == 1003
        ws.close()
        gw.store.apply("a", {"v": 2}, gw.clock.wall())
        with trio.fail_after(5):
            await other.wait_until(
                lambda m: m.topics.get("a") is not None and m.topics["a"].fields == {"v": 2}
            )
        nursery.cancel_scope.cancel()
    assert gw.server.stats.inbound_rejected["bad_json"] == 1
    assert gw.server.stats.internal_errors == 0


async def test_too_many_protocol_errors_close_with_4400(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_protocol_errors": 3})
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    for _ in range(4):
        await ws.send_json({"type": "nope"})
    with trio.fail_after(5):
        assert await ws.close_code_at_end() == 4400
    ws.close()


async def test_message_rate_limit_closes_with_4029(gateway_factory: Callable[..., Any]) -> None:
    gw: Gateway = await gateway_factory(server={"messages_per_s": 5, "message_burst": 10})
    ws = await RawWs.connect(gw.port)
    await ws.recv_json()
    await ws.send_raw(b"".join(ws.frame(b'{"type":"ping"}') for _ in range(30)))
    with trio.fail_after(5):
        assert await ws.close_code_at_end() == 4029
    ws.close()


async def test_connection_limits_answer_503_before_the_upgrade(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections_per_ip": 3})
    held = [await RawWs.connect(gw.port) for _ in range(3)]
    assert [w.status for w in held] == [101, 101, 101]
    refused = await RawWs.connect(gw.port)
    refused.close()
    assert refused.status == 503
    held.pop().close()
    with trio.fail_after(5):
        while gw.server._open >= 3:
            await trio.sleep(0.01)
    again = await RawWs.connect(gw.port)
    assert again.status == 101
    for w in [*held, again]:
        w.close()
    assert gw.server.stats.handshake_rejected["limit_per_ip"] == 1
