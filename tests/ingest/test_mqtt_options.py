"""MQTT 3.1.1 and 5, and mqtts:// with a password, against a real mosquitto."""

from __future__ import annotations

import datetime
import gc
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import Gateway
from tests.broker import Mosquitto
from tests.conftest import require_binary

from .test_mqtt import FAST, close_paho, until_subscribed


async def wait_for_value(gw: Gateway, topic: str, fields: dict[str, Any]) -> None:
    with trio.fail_after(10):
        while (st := gw.store.get(topic)) is None or st.fields != fields:
            await trio.sleep(0.02)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_both_protocol_versions(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, protocol: str
) -> None:
    gw: Gateway = await gateway_factory(
        mqtt={"url": mosquitto.url, "protocol": protocol, "client_id": f"gw-{protocol}", **FAST}
    )
    await until_subscribed(gw)
    await mosquitto.publish("telemetry/v/1", orjson.dumps({"p": protocol}))
    await wait_for_value(gw, "v/1", {"p": protocol})
    log = (mosquitto.dir / "mosquitto.log").read_text()
    # mosquitto logs the protocol level it saw: p2 for 3.1.1, p5 for MQTT 5
    assert f"as gw-{protocol} (p{5 if protocol == '5' else 2}," in log


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_mqtts_with_user_and_password(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    passwd_tool = require_binary("mosquitto_passwd", "mosquitto")
    ca, cert, key = make_certs(tmp_path)
    passwd = tmp_path / "passwd"
    await trio.run_process([passwd_tool, "-c", "-b", str(passwd), "gateway", "s3cret pass"])
    broker = Mosquitto(
        tmp_path / "broker",
        listener_options=[
            f"cafile {ca}",
            f"certfile {cert}",
            f"keyfile {key}",
            "allow_anonymous false",
            f"password_file {passwd}",
        ],
    )
    await broker.start()
    try:
        url = f"mqtts://gateway:s3cret%20pass@127.0.0.1:{broker.port}"
        gw: Gateway = await gateway_factory(mqtt={"url": url, "tls_ca_file": str(ca), **FAST})
        with trio.fail_after(10):
            while not (gw.mqtt and gw.mqtt.connected):
                await trio.sleep(0.01)
        assert "s3cret" not in repr(gw.cfg.mqtt) and "s3cret" not in gw.mqtt.detail
        # mosquitto_pub cannot reach this listener without TLS and a password: publish
        # from the gateway's side of the broker with paho instead
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        def publish() -> None:
            c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
            c.username_pw_set("gateway", "s3cret pass")
            c.tls_set(ca_certs=str(ca))
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            try:
                c.publish("telemetry/secure/1", b'{"ok": true}', qos=1).wait_for_publish(5)
            finally:
                close_paho(c)

        await until_subscribed(gw)
        await trio.to_thread.run_sync(publish)
        await wait_for_value(gw, "secure/1", {"ok": True})
        # a wrong password is refused by the broker and reported, not retried silently
        bad = await refused_gateway(
            gateway_factory, f"mqtts://gateway:wrong@127.0.0.1:{broker.port}", ca, "refused"
        )
        bad.server.request_shutdown()
        with trio.fail_after(5):
            await bad.server.stopped.wait()
        # a broker certificate the gateway cannot verify: refused with a clear reason,
        # and no socket left behind (paho does not close it when the handshake fails)
        (tmp_path / "other").mkdir()
        other_ca, _, _ = make_certs(tmp_path / "other")
        fds_before = open_fds()
        untrusting = await refused_gateway(
            gateway_factory,
            f"mqtts://gateway:s3cret%20pass@127.0.0.1:{broker.port}",
            other_ca,
            "CERTIFICATE_VERIFY_FAILED",
        )
        untrusting.server.request_shutdown()
        with trio.fail_after(5):
            await untrusting.server.stopped.wait()
        # until any abandoned connect thread has finished with its socket; with the
        # collector off, so that no GC can close a leaked one meanwhile
        gc.disable()
        try:
            with trio.move_on_after(5):
                while open_fds() != fds_before:
                    await trio.sleep(0.02)
            assert open_fds() == fds_before
        finally:
            gc.enable()
    finally:
        await broker.stop()


async def refused_gateway(factory: Callable[..., Any], url: str, ca: Path, reason: str) -> Gateway:
    """A gateway whose broker connection fails; returns once ``reason`` is reported."""
    gw: Gateway = await factory(mqtt={"url": url, "tls_ca_file": str(ca), **FAST})
    assert gw.mqtt is not None
    with trio.fail_after(10):
        while reason not in gw.mqtt.detail:
            await trio.sleep(0.02)
    assert not gw.mqtt.connected
    assert (await _ready(gw)) is False
    return gw


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _ready(gw: Gateway) -> bool:
    ok, _ = gw.server.readiness()
    return ok


async def test_the_brokers_answer_to_the_subscriptions_is_logged(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """The log says when the broker acknowledged the subscriptions: before that, a
    message published (not retained) never reaches the gateway, and a user who publishes
    a test message at once, or a test, must know."""
    with caplog.at_level(logging.INFO, logger="gateway.mqtt"):
        gw: Gateway = await gateway_factory(mqtt={"url": mosquitto.url, **FAST})
        await until_subscribed(gw)
        with trio.fail_after(5):
            while not any("acknowledged by the broker" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.02)


async def test_subscriptions_the_broker_refuses_are_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SUBACK that refuses a filter (an ACL: MQTT 5's 0x87, 3.1.1's 0x80; Debian's
    mosquitto 2.0.11 grants the subscription and filters at delivery, so the SUBACK is
    paho's own type, built here)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from gateway.ingest.mqtt import MqttIngest
    from gateway.ingest.paho_trio import PahoSession, new_client, parse_url

    broker = parse_url("mqtt://127.0.0.1:1")
    client, _ = new_client(broker, "t", "5")
    session = PahoSession(
        client, broker, protocol="5", subscriptions=[("telemetry/#", 0), ("status/#", 1)]
    )
    session._install_callbacks()  # as after a connect
    granted, refused = (ReasonCode(PacketTypes.SUBACK, identifier=i) for i in (0, 0x87))
    session._on_subscribe(client, None, 1, [granted, refused], None)
    assert session.refused == ["status/#"]
    with caplog.at_level(logging.INFO, logger="gateway.mqtt"):
        await MqttIngest._say_subscribed(session)
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "status/#" in record.getMessage() and "telemetry/#" not in record.getMessage()
