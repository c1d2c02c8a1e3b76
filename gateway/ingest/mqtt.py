"""MQTT ingest: messages from a broker into the state store.

The connection itself is :class:`gateway.ingest.paho_trio.PahoSession` (paho-mqtt
driven natively from Trio). This module adds the policy around it: messages go
straight into the state store from the reader, so the ingest never waits on
subscribers; failures reconnect with exponential backoff and full jitter
(``reconnect_min_s`` up to ``reconnect_max_s``, the attempt count reset after
``stable_s`` connected: gateway/backoff.py), re-subscribing each time; meanwhile the last state is
served, marked stale, and ``/readyz`` says not ready. No broker or network fault ends
:meth:`MqttIngest.run`: the session reports every one as MqttFailure, and anything
else (a bug) is logged with its traceback and retried like a fault.
"""

from __future__ import annotations

import collections
import logging
import random
import secrets
import ssl
import traceback
from dataclasses import dataclass, field

import trio

from ..backoff import Backoff
from ..clock import Clock
from ..config import MqttConfig
from ..core.state import InvalidUpdate, StateStore
from ..log import RateLimitedLog
from .codec import IngestError, Router, decode_fields, decode_status
from .paho_trio import MqttFailure, PahoSession, TlsOptions, first_leaf, new_client, parse_url

__all__ = ["IngestStats", "MqttIngest", "parse_url"]

log = logging.getLogger("gateway.mqtt")


@dataclass
class IngestStats:
    messages: collections.Counter[str] = field(default_factory=collections.Counter)  # by source
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)  # by reason
    connects: int = 0
    reconnects: int = 0
    disconnects: collections.Counter[str] = field(default_factory=collections.Counter)


class MqttIngest:
    def __init__(
        self,
        cfg: MqttConfig,
        store: StateStore,
        clock: Clock,
        max_topic_bytes: int,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.broker = parse_url(cfg.url)
        self.store = store
        self.clock = clock
        self.router = Router(cfg.routes, max_topic_bytes)
        self.stats = IngestStats()
        self.connected = False
        self.detail = "not connected yet"
        self.client_id = cfg.client_id or f"gateway-{secrets.token_hex(4)}"
        self._log = RateLimitedLog(log)
        self._session_obj: PahoSession | None = None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, cfg.stable_s, rng)
        self._now = clock.wall()  # the receive time of the current read burst

    def ready(self) -> tuple[bool, str]:
        return self.connected, self.detail

    # -- the reconnect loop -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        first = True
        while True:
            try:
                await self._session()
            except* (MqttFailure, OSError, ssl.SSLError) as group:
                err = first_leaf(group)
                reason = str(err) or type(err).__name__
                self.detail = f"disconnected: {reason}"
                self._log.limited("mqtt", "MQTT %s: %s", self.broker, reason)
            except* Exception as group:
                # not a broker fault but a bug (ours or paho's): logged with its
                # traceback, and the ingest reconnects; the gateway never exits for it
                err = first_leaf(group)
                self.detail = f"disconnected: internal error ({type(err).__name__})"
                self._log.limited(
                    "mqtt-bug",
                    "MQTT session failed unexpectedly (reconnecting):\n%s",
                    "".join(traceback.format_exception(err)),
                    level=logging.ERROR,
                )
            finally:
                if self.connected:
                    self.stats.disconnects["lost"] += 1
                self.connected = False
                self._session_obj = None
            stale = 0
            for marked in self.store.mark_all_stale_steps(self.clock.wall()):
                stale += marked
                await trio.lowlevel.checkpoint()
            if stale:
                log.info("MQTT down: %d topics marked stale until their devices report", stale)
            delay = self._backoff.next_delay()
            if not first:
                self.stats.reconnects += 1
            first = False
            log.info("MQTT: reconnecting to %s in %.1f s", self.broker, delay)
            await trio.sleep(delay)

    async def _session(self) -> None:
        cfg = self.cfg
        client, tls = new_client(
            self.broker,
            self.client_id,
            cfg.protocol,
            TlsOptions(cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_insecure),
        )
        session = PahoSession(
            client,
            self.broker,
            protocol=cfg.protocol,
            keepalive_s=cfg.keepalive_s,
            connect_timeout_s=cfg.connect_timeout_s,
            tcp_nodelay=cfg.tcp_nodelay,
            tls=tls,
            subscriptions=cfg.subscriptions,
            on_message=self._on_message,
            on_read_burst=self._on_read_burst,
            on_too_large=self._on_too_large,
            read_gather_s=cfg.read_gather_ms / 1000,
            max_payload_bytes=cfg.max_payload_bytes,
        )
        self._session_obj = session
        self.detail = f"connecting to {self.broker}"
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            self.connected = True
            self._backoff.up()  # stable_s counts from here (gateway/backoff.py)
            self.stats.connects += 1
            self.detail = f"connected to {self.broker}"
            log.info("MQTT: connected to %s as %s", self.broker, self.client_id)
            if cfg.subscriptions:
                nursery.start_soon(self._say_subscribed, session)

    @staticmethod
    async def _say_subscribed(session: PahoSession) -> None:
        """Log the broker's answer to the subscriptions: messages published before it
        (a retained one aside) never reach the gateway."""
        await session.subscribed.wait()
        if session.refused:
            log.warning(
                "MQTT: the broker refused the subscription to %s (its ACL, or the filter): "
                "no message on it reaches the gateway",
                ", ".join(session.refused),
            )
        else:
            log.info("MQTT: subscriptions acknowledged by the broker: messages flow from now on")

    def _on_read_burst(self) -> None:
        # one receive time per wake-up: the messages of one read burst arrived within
        # microseconds of each other, and the clock read is per-message cost
        self._now = self.clock.wall()

    def _on_message(self, topic: str | None, payload: bytes, retained: bool = False) -> None:
        # an exception here would end the connection: nothing may escape
        self.stats.messages["mqtt"] += 1
        if topic is None:  # not UTF-8
            self.stats.rejected["bad_topic"] += 1
            self._log.limited("reject:bad_topic", "MQTT message refused: its topic is not UTF-8")
            return
        try:
            self.handle(topic, payload, retained)
        except Exception:
            self.stats.rejected["internal_error"] += 1
            log.exception("MQTT message handler failed (the ingest goes on)")

    def _on_too_large(self, topic: str | None, size: int) -> None:
        # dropped by the session as it streamed in, never buffered whole
        self.stats.messages["mqtt"] += 1
        self.stats.rejected["too_large"] += 1
        self._log.limited(
            "reject:too_large",
            "MQTT message on %r refused: payload of %d bytes exceeds %d",
            (topic or "(topic not UTF-8)")[:200],
            size,
            self.cfg.max_payload_bytes,
        )

    def handle(self, mqtt_topic: str, payload: bytes, retained: bool = False) -> None:
        """One MQTT message into the store; refusals are counted and logged, never raised.
        ``retained``: the broker sent it from its store because we subscribed (on
        every connect): news only if it changes the topic (store.apply)."""
        stats = self.stats
        now = self._now
        try:
            route, topic = self.router.route(mqtt_topic)
            if route.kind == "status":
                online = decode_status(payload)
                if online is not None:
                    self.store.set_presence(topic, online, now, retained=retained)
                return
            fields, device_ts, mode = decode_fields(payload, route, self.cfg.max_payload_bytes)
            # a nested value needs a '[' or a second '{' in the payload (the bytes are
            # searched in C; the fields only when one is there)
            if b"[" in payload or payload.count(b"{") > 1:
                self._note_nested(fields, mqtt_topic)
            self.store.apply(topic, fields, now, device_ts=device_ts, mode=mode, retained=retained)
        except IngestError as err:
            stats.rejected[err.reason] += 1
            self._log.limited(
                f"reject:{err.reason}", "MQTT message on %r refused: %s", mqtt_topic[:200], err
            )
        except InvalidUpdate as err:
            stats.rejected[err.reason] += 1
            self._log.limited(
                f"reject:{err.reason}", "MQTT message on %r refused: %s", mqtt_topic[:200], err
            )

    def _note_nested(self, fields: dict[str, object], mqtt_topic: str) -> None:
        for v in fields.values():
            t = type(v)
            if t is dict or t is list:
                self._log.limited(
                    "nested",
                    "MQTT message on %r: a field holds a JSON object or array; it is stored "
                    "and sent whole, but deadbands, the dashboard's tiles and charts use only "
                    "numbers, strings and booleans (docs/operations.md, Payloads)",
                    mqtt_topic[:200],
                    level=logging.INFO,
                )
                break
