"""The reader's own framing (QoS 0 straight to the handler, everything else through
paho) against a real mosquitto, and against a fake broker for what mosquitto never
sends (a topic that is not UTF-8: mosquitto drops such a publisher)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio

from gateway.app import Gateway
from gateway.ingest.paho_trio import (
    MqttFailure,
    PahoSession,
    first_leaf,
    new_client,
    parse_url,
)
from tests.broker import Mosquitto

from .test_mqtt import FAST, mqtt_gateway, until_subscribed
from .test_mqtt_options import wait_for_value


async def test_qos0_and_qos1_messages_both_arrive_in_order(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    subs = [{"filter": "telemetry/q0/#", "qos": 0}, {"filter": "telemetry/q1/#", "qos": 1}]
    gw = await mqtt_gateway(gateway_factory, mosquitto, subscriptions=subs)
    await mosquitto.publish("telemetry/q0/a", b'{"v": 1}', qos=0)
    await mosquitto.publish("telemetry/q1/a", b'{"v": 2}', qos=1)
    await mosquitto.publish("telemetry/q1/a", b'{"v": 3}', qos=1)
    await mosquitto.publish("telemetry/q0/a", b'{"v": 4}', qos=1)  # delivered at QoS 0
    await wait_for_value(gw, "q0/a", {"v": 4})
    await wait_for_value(gw, "q1/a", {"v": 3})
    assert gw.mqtt is not None and gw.mqtt.stats.messages["mqtt"] == 4
    # a QoS 1 message paho reads in several 2 KiB parts arrives whole
    note = "x" * 20_000
    await mosquitto.publish("telemetry/q1/b", orjson.dumps({"note": note}), qos=1)
    await wait_for_value(gw, "q1/b", {"note": note})


async def test_mqtt5_publishes_with_user_properties_arrive(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    subs = [{"filter": "telemetry/#", "qos": 0}, {"filter": "status/#", "qos": 1}]
    gw: Gateway = await gateway_factory(
        mqtt={"url": mosquitto.url, "protocol": "5", "subscriptions": subs, **FAST}
    )
    await until_subscribed(gw)
    for n, (topic, qos) in enumerate([("telemetry/p/1", 0), ("telemetry/p/1", 1)]):
        args = [mosquitto.pub, "-V", "5", "-h", "127.0.0.1", "-p", str(mosquitto.port)]
        args += ["-t", topic, "-q", str(qos), "-m", orjson.dumps({"n": n}).decode()]
        args += ["-D", "publish", "user-property", "a", "b" * 300]
        args += ["-D", "publish", "content-type", "application/json"]
        await trio.run_process(args, stdout=subprocess.DEVNULL)
        await wait_for_value(gw, "p/1", {"n": n})
    args = [mosquitto.pub, "-V", "5", "-h", "127.0.0.1", "-p", str(mosquitto.port)]
    args += ["-t", "status/p/1", "-q", "1", "-m", "online", "-D", "publish", "user-property"]
    args += ["k", "v"]
    await trio.run_process(args, stdout=subprocess.DEVNULL)
    with trio.fail_after(10):
        while (st := gw.store.get("p/1")) is None or st.online is not True:
            await trio.sleep(0.02)
    assert gw.mqtt is not None and not gw.mqtt.stats.rejected


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_retained_messages_arrive_at_subscribe(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, protocol: str
) -> None:
    await mosquitto.publish("telemetry/r/0", b'{"v": 0}', retain=True, qos=0)
    await mosquitto.publish("telemetry/r/1", b'{"v": 1}', retain=True, qos=1)
    await mosquitto.publish("status/r/1", b"online", retain=True, qos=1)
    gw = await mqtt_gateway(gateway_factory, mosquitto, protocol=protocol)
    await wait_for_value(gw, "r/0", {"v": 0})
    await wait_for_value(gw, "r/1", {"v": 1})
    with trio.fail_after(10):
        while (st := gw.store.get("r/1")) is None or st.online is not True:
            await trio.sleep(0.02)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_an_oversize_payload_is_refused_and_the_next_message_arrives(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto, protocol: str
) -> None:
    subs = [{"filter": "telemetry/#", "qos": 1}]
    gw = await mqtt_gateway(
        gateway_factory, mosquitto, max_payload_bytes=1000, subscriptions=subs, protocol=protocol
    )
    assert gw.mqtt is not None
    big = orjson.dumps({"v": "x" * 300_000})
    for n in range(3):  # QoS 0, 1, 2 each (a QoS 1/2 one is acknowledged all the same)
        await mosquitto.publish("telemetry/big/1", big, qos=n)
        await mosquitto.publish("telemetry/big/ok", orjson.dumps({"n": n}), qos=n)
        await wait_for_value(gw, "big/ok", {"n": n})
    assert dict(gw.mqtt.stats.rejected) == {"too_large": 3}
    assert "big/1" not in gw.store
    assert gw.mqtt.stats.connects == 1 and gw.mqtt.connected


async def test_keepalive_pings_keep_an_idle_connection_up(
    gateway_factory: Callable[..., Any], mosquitto: Mosquitto
) -> None:
    gw = await mqtt_gateway(gateway_factory, mosquitto, keepalive_s=1.0)
    assert gw.mqtt is not None
    session = gw.mqtt._session_obj
    # nothing to read but PINGRESPs for several keepalive periods: paho sends PINGREQ,
    # its PINGRESP reaches it through our reader, and our watchdog (1.5 x keepalive of
    # silence ends the connection) sees each one
    await trio.sleep(4.5)
    assert gw.mqtt.connected and gw.mqtt._session_obj is session
    assert gw.mqtt.stats.connects == 1 and not gw.mqtt.stats.disconnects
    await mosquitto.publish("telemetry/ka/1", b"1")
    await wait_for_value(gw, "ka/1", {"value": 1})


# -- a fake broker: what mosquitto itself never sends --------------------------------


def publish_packet(topic: bytes, payload: bytes, qos: int = 0, pid: int = 0) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"")
    body += payload
    assert len(body) < 128 * 128
    size = (
        bytes([len(body)]) if len(body) < 128 else bytes([len(body) & 0x7F | 0x80, len(body) >> 7])
    )
    return bytes([0x30 | qos << 1]) + size + body


async def fake_broker(packets: bytes, received: list[bytes]) -> Callable[[trio.SocketStream], Any]:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)  # CONNECT
        await stream.send_all(b"\x20\x02\x00\x00" + packets)
        with trio.move_on_after(5):
            while data := await stream.receive_some(4096):
                received.append(data)

    return serve


async def run_against(packets: bytes, **kwargs: Any) -> tuple[list[tuple[Any, bytes]], list[bytes]]:
    """A gateway-side session against a broker that sends ``packets`` after CONNACK;
    returns what reached the handler and what the session sent back."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[bytes] = []
    messages: list[tuple[Any, bytes]] = []
    done = trio.Event()

    def handler(topic: str | None, payload: bytes) -> None:
        messages.append((topic, payload))
        if payload == b"last":
            done.set()

    broker = parse_url(f"mqtt://127.0.0.1:{port}")
    client, _ = new_client(broker, "t", "3.1.1")
    session = PahoSession(client, broker, keepalive_s=5, on_message=handler, **kwargs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, await fake_broker(packets, received), listeners)
        nursery.start_soon(session.run)
        with trio.fail_after(10):
            await done.wait()
            await session.wait_sent()
            await trio.sleep(0.1)  # what the session wrote reaches the broker
        nursery.cancel_scope.cancel()
    return messages, received


async def test_a_topic_that_is_not_utf8_reaches_the_handler_as_none_and_the_next_arrives() -> None:
    packets = publish_packet(b"t/\xff\xfe", b"1") + publish_packet(b"t/\xc3", b"2", 1, 7)
    packets += publish_packet(b"t/ok", b"last")
    messages, _ = await run_against(packets)
    assert messages == [(None, b"1"), (None, b"2"), ("t/ok", b"last")]


async def test_the_gateway_counts_a_topic_that_is_not_utf8_and_takes_the_next(
    gateway_factory: Callable[..., Any],
) -> None:
    # the whole ingest (MqttIngest in a gateway) against the fake broker: QoS 0 and 1
    packets = publish_packet(b"telemetry/\xff/1", b"1") + publish_packet(
        b"telemetry/\xc3/2", b"2", 1, 7
    )
    packets += publish_packet(b"telemetry/u/ok", b'{"v": 3}')
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, await fake_broker(packets, []), listeners)
        gw: Gateway = await gateway_factory(mqtt={"url": f"mqtt://127.0.0.1:{port}", **FAST})
        await wait_for_value(gw, "u/ok", {"v": 3})
        assert gw.mqtt is not None
        assert dict(gw.mqtt.stats.rejected) == {"bad_topic": 2}
        assert gw.mqtt.stats.messages["mqtt"] == 3 and gw.mqtt.connected
        nursery.cancel_scope.cancel()


async def test_an_oversize_qos1_publish_is_acknowledged_skipped_and_reported() -> None:
    too_large: list[tuple[str | None, int]] = []
    packets = publish_packet(b"t/big", b"x" * 5000, 1, 0x1234)
    packets += publish_packet(b"t/big0", b"y" * 3000) + publish_packet(b"t/ok", b"last")
    messages, received = await run_against(
        packets, max_payload_bytes=1000, on_too_large=lambda t, n: too_large.append((t, n))
    )
    assert messages == [("t/ok", b"last")]
    assert too_large == [("t/big", 5000), ("t/big0", 3000)]
    assert b"\x40\x02\x12\x34" in b"".join(received)  # PUBACK for packet id 0x1234


async def test_a_malformed_packet_ends_the_session_with_a_clear_reason() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    received: list[bytes] = []
    packets = publish_packet(b"t/a", b"1") + b"\x30\x05\x00\x09abc"  # topic past the end
    broker = parse_url(f"mqtt://127.0.0.1:{port}")
    client, _ = new_client(broker, "t", "3.1.1")
    session = PahoSession(client, broker, keepalive_s=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, await fake_broker(packets, received), listeners)
        with trio.fail_after(10), pytest.raises(BaseExceptionGroup) as info:
            await session.run()
        nursery.cancel_scope.cancel()
    err = first_leaf(info.value)
    assert isinstance(err, MqttFailure)
    assert str(err) == (
        "malformed packet from the broker (a PUBLISH whose topic is longer than the packet)"
    )
    assert session.delivered == 1 and session.closed


async def trickle(listeners: list[trio.SocketListener], packets: list[bytes]) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)  # CONNECT
        await stream.send_all(b"\x20\x02\x00\x00")
        for packet in packets:  # one segment each, a millisecond apart
            await trio.sleep(0.001)
            await stream.send_all(packet)
        await trio.sleep_forever()

    await trio.serve_listeners(serve, listeners)


@pytest.mark.parametrize("gather", [0.0, 0.1])
async def test_the_reader_gathers_a_trickle_into_few_wake_ups(gather: float) -> None:
    """After a read that drained the socket the reader waits ``read_gather_s``: a
    stream of small messages costs one wake-up per gathering, not one per message."""
    packets = [publish_packet(b"t/a", str(i).encode()) for i in range(40)]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: list[bytes] = []
    bursts = 0
    done = trio.Event()

    def handler(topic: str | None, payload: bytes) -> None:
        got.append(payload)
        if len(got) == len(packets):
            done.set()

    def burst() -> None:
        nonlocal bursts
        bursts += 1

    broker = parse_url(f"mqtt://127.0.0.1:{port}")
    client, _ = new_client(broker, "t", "3.1.1")
    session = PahoSession(
        client, broker, keepalive_s=5, on_message=handler, on_read_burst=burst,
        read_gather_s=gather,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, listeners, packets)
        nursery.start_soon(session.run)
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert got == [str(i).encode() for i in range(40)]  # nothing lost, in order
    if gather:
        assert bursts <= 10  # 40 ms of trickle, gathered 100 ms at a time (+ the CONNACK)
    else:
        assert bursts >= 20  # the control: a wake-up per message


async def test_a_turn_of_the_reader_ends_within_four_messages_of_its_time(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The reader's turn ends once ``read_budget_s`` is spent, looked at every 4
    messages: when messages turn slow (the probe saw 16 take 5 to 10 ms), a turn
    overruns by at most 4 of them, not 16."""
    mock_clock.rate = 1.0  # real time passes; each message below costs 0.5 ms more
    packets = [publish_packet(b"t/a", str(i).encode()) for i in range(64)]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: list[bytes] = []
    done = trio.Event()

    def handler(topic: str | None, payload: bytes) -> None:
        got.append(payload)
        mock_clock.jump(0.0005)
        if len(got) == len(packets):
            done.set()

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)  # CONNECT
        await stream.send_all(b"\x20\x02\x00\x00")
        await stream.send_all(b"".join(packets))  # all at once: one read has them all
        await trio.sleep_forever()

    broker = parse_url(f"mqtt://127.0.0.1:{port}")
    client, _ = new_client(broker, "t", "3.1.1")
    session = PahoSession(
        client, broker, keepalive_s=5, on_message=handler, read_budget_s=0.001,
        read_gather_s=0.0,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        nursery.start_soon(session.run)
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert got == [str(i).encode() for i in range(64)]  # nothing lost, in order
    # 1 ms is 2 messages: a turn ends at the 4th, so 64 messages take >= 15 turns
    assert session.yields >= 64 // 4 - 1
