"""Every way a broker can misbehave ends a PahoSession with MqttFailure, never with
anything else: the caller's reconnect loop catches MqttFailure, and anything else
would end the gateway (or the simulator). A fake broker on 127.0.0.1 plays each fault
byte for byte; the last test checks that no socket is left open afterwards."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from gateway.clock import Clock
from gateway.config import MqttConfig
from gateway.core.state import StateStore
from gateway.ingest.mqtt import MqttIngest
from gateway.ingest.paho_trio import BrokerUrl, MqttFailure, PahoSession, new_client, parse_url

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_BAD_PASSWORD = b"\x20\x02\x00\x04"


async def read_connect(stream: trio.SocketStream) -> None:
    data = b""
    while len(data) < 2 or len(data) < 2 + data[1]:  # CONNECT is well under 128 bytes
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        data += chunk


def reset(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def closes_at_once(stream: trio.SocketStream) -> None:
    stream.socket.close()


async def resets_at_once(stream: trio.SocketStream) -> None:
    reset(stream)


async def never_answers(stream: trio.SocketStream) -> None:
    await read_connect(stream)
    await trio.sleep(5)


async def refuses_the_password(stream: trio.SocketStream) -> None:
    await read_connect(stream)
    await stream.send_all(CONNACK_BAD_PASSWORD)
    await trio.sleep(0.05)
    stream.socket.close()


async def resets_after_connack(stream: trio.SocketStream) -> None:
    await read_connect(stream)
    await stream.send_all(CONNACK_OK)
    await trio.sleep(0.2)
    reset(stream)


async def sends_a_malformed_packet(stream: trio.SocketStream) -> None:
    await read_connect(stream)
    await stream.send_all(CONNACK_OK)
    await trio.sleep(0.2)
    await stream.send_all(b"\x30\xff\xff\xff\xff\xff")  # a remaining length of 5 bytes
    await trio.sleep(5)


async def floods_then_closes(stream: trio.SocketStream) -> None:
    await read_connect(stream)
    publish = b"\x30\x0c\x00\x03a/b" + b'{"v":1}'
    await stream.send_all(CONNACK_OK + publish * 20_000)
    stream.socket.close()


async def stops_reading_and_closes(stream: trio.SocketStream) -> None:
    # the simulator's case: we publish megabytes, the broker goes away mid-write
    await read_connect(stream)
    await stream.send_all(CONNACK_OK)
    await trio.sleep(0.3)
    reset(stream)


BEHAVIOURS: dict[str, Callable[[trio.SocketStream], Awaitable[None]]] = {
    "closes_at_once": closes_at_once,
    "resets_at_once": resets_at_once,
    "never_answers": never_answers,
    "refuses_the_password": refuses_the_password,
    "resets_after_connack": resets_after_connack,
    "sends_a_malformed_packet": sends_a_malformed_packet,
    "floods_then_closes": floods_then_closes,
    "stops_reading_and_closes": stops_reading_and_closes,
}


async def run_session(broker: BrokerUrl, *, publish: bool = False) -> MqttFailure:
    client, tls = new_client(broker, "t", "3.1.1")
    session = PahoSession(client, broker, keepalive_s=1, connect_timeout_s=1.0, tls=tls)

    async def publisher() -> None:
        while not session.connected:
            await trio.sleep(0.01)
        chunk = b"x" * 60_000
        while not session.closed:
            for _ in range(50):
                session.publish_qos0("t/x", chunk)
            await session.wait_sent()

    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                if publish:
                    nursery.start_soon(publisher)
                await session.run()
        except BaseExceptionGroup as group:  # only MqttFailure may come out
            leaves = group.split(MqttFailure)[0]
            rest = group.split(MqttFailure)[1]
            assert rest is None, repr(rest)
            assert leaves is not None
            err: BaseException = leaves
            while isinstance(err, BaseExceptionGroup):
                err = err.exceptions[0]
            assert isinstance(err, MqttFailure)
            assert session.closed
            return err
        except MqttFailure as err:
            assert session.closed
            return err
    raise AssertionError("run() returned")


@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
async def test_every_broker_fault_ends_the_session_with_mqtt_failure(behaviour: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    fds = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, BEHAVIOURS[behaviour], listeners)
        err = await run_session(
            parse_url(f"mqtt://127.0.0.1:{port}"), publish=behaviour == "stops_reading_and_closes"
        )
        nursery.cancel_scope.cancel()
    if behaviour == "refuses_the_password":
        assert "refused" in str(err)
    if behaviour == "never_answers":
        assert "CONNACK" in str(err)
    for listener in listeners:
        await listener.aclose()
    assert len(os.listdir("/proc/self/fd")) <= fds  # the session's socket is closed


@pytest.mark.parametrize("host", ["bad..host", "127.0.0.1:1"])
async def test_a_host_that_cannot_be_reached_or_named_is_an_mqtt_failure(host: str) -> None:
    broker = BrokerUrl(
        False, host.split(":")[0], int(host.split(":")[1]) if ":" in host else 1883, None, None
    )
    err = await run_session(broker)
    assert "connect failed" in str(err)


def planned_broker(
    plan: list[float | None], done: trio.Event
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A broker whose n-th connection reads the CONNECT and then, for ``plan[n]`` None,
    never answers; else sends CONNACK, holds the connection ``plan[n]`` seconds and
    resets it. The connection after the last: ``done`` is set, and it is never answered."""
    accepted = 0

    async def broker(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        if accepted > len(plan):
            done.set()
            await trio.sleep_forever()
        held = plan[accepted - 1]
        await read_connect(stream)
        if held is None:
            await trio.sleep_forever()
        await stream.send_all(CONNACK_OK)
        await trio.sleep(held)
        reset(stream)

    return broker


class CapsSeen:
    """An rng for MqttIngest that notes each backoff cap it draws under and waits the
    least it may (the caps are what the rule decides; the draws are not)."""

    def __init__(self) -> None:
        self.caps: list[float] = []

    def uniform(self, low: float, high: float) -> float:
        self.caps.append(round(high, 6))
        return low


async def test_only_a_session_connected_for_stable_s_resets_the_ingest_backoff() -> None:
    """An attempt that waits its whole connect timeout for a CONNACK is a failure
    however long it took: with ``connect_timeout_s`` as long as ``stable_s`` the
    ingest counted it as a stable connection and never backed off from a hung broker.
    A session connected for ``stable_s`` resets the count; one lost sooner does not."""
    plan = [None] * 4 + [0.9, 0.05, 0.05]
    done = trio.Event()
    broker = planned_broker(plan, done)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    cfg = MqttConfig(
        url=f"mqtt://127.0.0.1:{port}",
        connect_timeout_s=0.5,
        stable_s=0.5,
        reconnect_min_s=0.01,
        reconnect_max_s=10.0,
    )
    rng = CapsSeen()
    ingest = MqttIngest(cfg, StateStore("e"), Clock(), 1024, rng=rng)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, broker, listeners)
        nursery.start_soon(ingest.run)
        with trio.fail_after(20):
            await done.wait()
        nursery.cancel_scope.cancel()
    # four timed out: 0.02 doubling; held 0.9 s: afresh; lost within 0.05 s: doubling on
    assert rng.caps[: len(plan)] == [0.02, 0.04, 0.08, 0.16, 0.02, 0.04, 0.08], rng.caps


async def test_the_ingest_outlives_a_broker_refusing_it_for_a_day(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A day of refused attempts at the default backoff (1 to 60 s): about 2,900. The
    cap was computed as ``reconnect_min_s * 2**attempt``, which raises OverflowError at
    attempt 1,024 (about nine hours in), outside the loop's error handling: the ingest,
    and the gateway with it, would have ended."""
    with socket.socket() as s:  # a port nobody listens on: every attempt refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ingest = MqttIngest(MqttConfig(url=f"mqtt://127.0.0.1:{port}"), StateStore("e"), Clock(), 1024)
    with trio.move_on_after(24 * 3600):
        await ingest.run()
    # at least 86,400 / (60 + 10) = 1,234 attempts even if each waited out its connect
    # timeout (the mock clock can jump while a connect runs on its thread)
    assert ingest.stats.reconnects > 1_100
    # the day may end in a backoff wait or in an attempt: either way it is still trying
    assert not ingest.connected
    assert ingest.detail.startswith(("disconnected:", "connecting to")), ingest.detail
