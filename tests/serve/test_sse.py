"""Server-Sent Events at /sse: the same messages as the WebSocket, Last-Event-ID resume,
heartbeat comments, the same auth and limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio

from gateway.app import Gateway
from gateway.core.mirror import Mirror
from gateway.core.protocol import decode_server

from .test_security import JWT_AUTH, good_claims, hs


class EventStream:
    """A minimal EventSource: raw HTTP, events parsed as the HTML spec says."""

    def __init__(self, sock: trio.socket.SocketType, status: int, head: bytes, rest: bytes) -> None:
        self.sock, self.status, self.head, self.buf = sock, status, head, rest
        self.last_id: str | None = None
        self.comments = 0

    @classmethod
    async def open(
        cls, port: int, query: str, headers: dict[str, str] | None = None
    ) -> EventStream:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        lines = [f"GET /sse?{query} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        return cls(sock, int(head.split()[1]), head, rest)

    async def event(self) -> dict | None:
        """The next dispatched event's JSON (None at the end of the stream)."""
        data: list[bytes] = []
        while True:
            while b"\n" not in self.buf:
                chunk = await self.sock.recv(65536)
                if not chunk:
                    return None
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\n")
            if line == b"":
                if data:
                    return orjson.loads(b"\n".join(data))
                continue
            if line.startswith(b":"):
                self.comments += 1
            elif line.startswith(b"data: "):
                data.append(line[6:])
            elif line.startswith(b"id: "):
                self.last_id = line[4:].decode()

    def close(self) -> None:
        self.sock.close()


async def drain(stream: EventStream, mirror: Mirror, quiet_s: float = 0.3) -> list[str]:
    """Apply events to ``mirror`` until the stream is quiet; the topics that came."""
    got: list[str] = []
    while True:
        with trio.move_on_after(quiet_s) as idle:
            msg = await stream.event()
        if idle.cancelled_caught or msg is None:
            return got
        for m in decode_server(orjson.dumps(msg)):
            if hasattr(m, "seq"):
                assert mirror.apply(m) != "gap"  # type: ignore[arg-type]
                got.append(m.topic)  # type: ignore[attr-defined]


def state_of(gw: Gateway, prefix: str) -> dict[str, Any]:
    return {st.topic: st.fields for st in gw.store.states() if st.topic.startswith(prefix)}


async def test_snapshot_deltas_and_last_event_id_resume(gateway: Gateway) -> None:
    gw = gateway
    for i in range(5):
        gw.store.apply(f"site/d{i}", {"v": i}, gw.clock.wall())
    gw.store.apply("other/x", {"v": 0}, gw.clock.wall())
    s = await EventStream.open(gw.port, "filter=site/%23&rate=20")
    assert s.status == 200 and b"text/event-stream" in s.head
    welcome = await s.event()
    assert welcome is not None and welcome["type"] == "welcome"
    assert (await s.event())["type"] == "ack"  # type: ignore[index]
    mirror = Mirror()
    mirror.set_epoch(welcome["epoch"])
    assert sorted(await drain(s, mirror)) == [f"site/d{i}" for i in range(5)]
    gw.store.apply("site/d1", {"v": 10}, gw.clock.wall())
    assert await drain(s, mirror) == ["site/d1"]
    assert {t: m.fields for t, m in mirror.topics.items()} == state_of(gw, "site/")
    last = s.last_id
    assert last is not None and last.startswith(gw.store.epoch + ":")
    s.close()
    # while it is away: two topics change, one appears; the others must not be resent
    gw.store.apply("site/d2", {"v": 20}, gw.clock.wall())
    gw.store.apply("site/d3", {"w": 1}, gw.clock.wall())
    gw.store.apply("site/new", {"v": 1}, gw.clock.wall())
    gw.store.apply("other/x", {"v": 1}, gw.clock.wall())
    s = await EventStream.open(gw.port, "filter=site/%23&rate=20", {"Last-Event-ID": last})
    assert (await s.event())["type"] == "welcome"  # type: ignore[index]
    assert (await s.event())["type"] == "ack"  # type: ignore[index]
    assert sorted(await drain(s, mirror)) == ["site/d2", "site/d3", "site/new"]
    assert {t: m.fields for t, m in mirror.topics.items()} == state_of(gw, "site/")
    s.close()
    # another epoch's id (a restarted gateway): a snapshot of everything
    s = await EventStream.open(gw.port, "filter=site/%23", {"Last-Event-ID": "old:99"})
    await s.event()
    await s.event()
    assert len(await drain(s, Mirror())) == 6
    s.close()
    # an id reused with other filters names nothing the stream holds: other/x came
    # with it once (found by a client written from docs/protocol.md alone)
    s = await EventStream.open(gw.port, "filter=site/%23&filter=other/%23", {"Last-Event-ID": last})
    await s.event()
    await s.event()
    assert sorted(await drain(s, Mirror())) == sorted([*state_of(gw, "site/"), "other/x"])
    s.close()
    # the same filters in another order (and repeated) are the same stream
    s = await EventStream.open(gw.port, "filter=other/%23&filter=site/%23")
    await s.event()
    await s.event()
    await drain(s, Mirror())
    mark = s.last_id
    s.close()
    gw.store.apply("site/d4", {"v": 40}, gw.clock.wall())
    query = "filter=site/%23&filter=other/%23&filter=site/%23"
    s = await EventStream.open(gw.port, query, {"Last-Event-ID": mark})
    await s.event()
    await s.event()
    assert await drain(s, Mirror()) == ["site/d4"]
    s.close()


async def test_heartbeat_comments_and_a_close_event_on_shutdown(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(server={"heartbeat_s": 0.3})
    s = await EventStream.open(gw.port, "filter=%23")
    await s.event()
    await s.event()
    with trio.fail_after(3):
        while s.comments < 2:  # quiet stream: ": hb" keeps proxies from closing it
            with trio.move_on_after(0.1):
                await s.event()
    gw.server.request_shutdown()
    with trio.fail_after(5):
        msg = await s.event()
    assert msg == {"type": "close", "code": 1012, "reason": "service restart: reconnect"}
    with trio.fail_after(5):
        assert await s.event() is None  # and the stream ends
    s.close()


async def test_same_auth_grants_and_input_checks_as_the_websocket(
    gateway_factory: Callable[..., Any],
) -> None:
    gw: Gateway = await gateway_factory(auth=JWT_AUTH)
    gw.store.apply("site/berlin/p1", {"v": 1}, gw.clock.wall())
    gw.store.apply("site/paris/p1", {"v": 2}, gw.clock.wall())
    token = hs(good_claims(topics=["site/berlin/#"]))
    for query, headers, status in [
        ("filter=%23", {}, 401),  # no token
        ("filter=%23&access_token=garbage", {}, 401),
        ("filter=%23", {"Origin": "http://evil.example", "Authorization": f"Bearer {token}"}, 403),
        ("filter=a/%23/b", {"Authorization": f"Bearer {token}"}, 400),
        ("", {"Authorization": f"Bearer {token}"}, 400),
        ("filter=%23&rate=-1", {"Authorization": f"Bearer {token}"}, 400),
        ("filter=%ff%fe", {"Authorization": f"Bearer {token}"}, 400),  # not UTF-8
        # outside the grants: refused before the stream, as the WebSocket refuses the
        # subscribe (it was a 200 with an error event and heartbeats for ever)
        ("filter=site/paris/%23", {"Authorization": f"Bearer {token}"}, 403),
        ("filter=site/berlin/%23&filter=z/1", {"Authorization": f"Bearer {token}"}, 403),
    ]:
        s = await EventStream.open(gw.port, query, headers)
        s.close()
        assert s.status == status, (query, headers)
    assert gw.server.stats.handshake_rejected["forbidden"] == 2
    s = await EventStream.open(gw.port, f"filter=%23&access_token={token}")
    assert s.status == 200
    await s.event()
    await s.event()
    got = await drain(s, Mirror())
    assert got == ["site/berlin/p1"]  # '#' within the grants: never paris
    s.close()


async def test_a_stream_over_the_connection_limits_is_refused_before_it_starts(
    gateway_factory: Callable[..., Any],
) -> None:
    """With limits below /sse's 16 filters, the subscription would be refused inside
    the stream: refused up front instead (an EventSource stops on a 400)."""
    gw: Gateway = await gateway_factory(server={"max_groups_per_connection": 2})
    s = await EventStream.open(gw.port, "filter=a&filter=b&filter=c")
    s.close()
    assert s.status == 400
    s = await EventStream.open(gw.port, "filter=a&filter=b&filter=a")  # two distinct
    assert s.status == 200
    assert (await s.event())["type"] == "welcome"  # type: ignore[index]
    assert (await s.event())["type"] == "ack"  # type: ignore[index]
    s.close()
