"""The Python client reconnects by itself and converges on the new gateway's state."""

from __future__ import annotations

import random
import socket

import trio
import trio.testing

from gateway.app import Gateway, serve
from gateway.client import GatewayClient

from .conftest import make_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_client_reconnects_after_a_restart_and_holds_the_new_state() -> None:
    port = free_port()
    cfg = make_config(server={"port": port, "shutdown_timeout_s": 1.0})
    client = GatewayClient(
        f"ws://127.0.0.1:{port}/ws",
        ["#"],
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
        rng=random.Random(7),
    )
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as first:
            gw = await first.start(serve, cfg)
            for i in range(20):
                gw.store.apply(f"d/{i}", {"v": i, "old": True}, gw.clock.wall())
            outer.start_soon(client.run)
            with trio.fail_after(5):
                await client.wait_until(lambda m: len(m.topics) == 20)
            old_epoch = client.mirror.epoch
            gw.server.request_shutdown()
        assert client.last_close[0] == 1012 or not client.connected
        with trio.fail_after(5):  # the client notices and starts backing off
            await client.wait_until(lambda m: not client.connected)
        async with trio.open_nursery() as second:
            gw2 = await second.start(serve, cfg)
            for i in range(10, 30):
                gw2.store.apply(f"d/{i}", {"v": i * 10}, gw2.clock.wall())

            def same_state(m: object) -> bool:
                return client.connected and {
                    t: (x.seq, x.fields) for t, x in client.mirror.topics.items()
                } == {st.topic: (st.seq, st.fields) for st in gw2.store.states()}

            with trio.fail_after(10):
                await client.wait_until(same_state)
            assert client.mirror.epoch == gw2.store.epoch != old_epoch
            assert client.connects == 2
            client.stop()
            gw2.server.request_shutdown()
        outer.cancel_scope.cancel()


def test_backoff_is_full_jitter_and_capped() -> None:
    client = GatewayClient(
        "ws://x/ws", ["#"], backoff_base_s=0.5, backoff_cap_s=30, rng=random.Random(1)
    )
    delays = [[client.backoff_delay(a) for _ in range(200)] for a in range(10)]
    for attempt, ds in enumerate(delays):
        bound = min(30, 0.5 * 2**attempt)
        assert all(0 <= d <= bound for d in ds)
        assert max(ds) > 0.8 * bound  # spread over the whole range, not a fixed step
    assert max(delays[9]) <= 30


async def test_after_a_restart_notice_refusals_do_not_grow_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The gateway says 1012 and is gone for 5 s (connections refused), then back on the
    # same port. Growing the backoff over those refusals would leave the client waiting
    # seconds more; it must be back within the first window (0.5 s) of the return.
    port = free_port()
    cfg = make_config(server={"port": port, "shutdown_timeout_s": 1.0})
    client = GatewayClient(f"ws://127.0.0.1:{port}/ws", ["#"], rng=random.Random(7))
    async with trio.open_nursery() as nursery:
        first: Gateway = await nursery.start(serve, cfg)
        await nursery.start(client.run)
        first_epoch = client.mirror.epoch
        first.server.request_shutdown()
        with trio.fail_after(5):
            await first.server.stopped.wait()
        # deliberate (virtual time): the restart takes a while, every attempt is refused
        await trio.sleep(5.0)
        second: Gateway = await nursery.start(serve, cfg)
        back = trio.current_time()
        with trio.fail_after(30):
            await client.wait_until(lambda m: m.epoch not in (None, first_epoch))
        assert trio.current_time() - back <= client.backoff_base_s + 0.1
        assert client.last_close[0] == 1012
        client.stop()
        second.server.request_shutdown()
        nursery.cancel_scope.cancel()
