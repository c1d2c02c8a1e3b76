"""Prometheus metrics, on an injected registry (never the process-wide default).

Rules:
* Counters live where the work happens (ServerStats, OutboxStats, StateStats,
  IngestStats) as plain integers; :class:`GatewayCollector` turns them into metric
  families at scrape time, and computes current-state gauges (connections, topics,
  devices by state) then too.
* A scrape holds the event loop for no more than its families: what counts every
  topic (:class:`TopicCensus`) is counted in slices with checkpoints before the
  exposition is rendered, not inside a collector.
* Labels are low-cardinality: reasons, sources, states. Never a topic, device,
  token or address, so 10,000 topics add no series.
* Every known label value is exported from the start (at 0), so dashboards and
  alert expressions have series before the first event.
* Latencies are histograms observed by the shell: per topic per tick on the path
  of subscribers in sync (device timestamp -> frame written, gateway receive ->
  frame written), and per subscriber per sweep (how old the data waiting for it is).

docs/metrics.md lists every metric with its meaning and the panel that uses it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

import trio
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from . import __version__
from .core.disconnect import METRIC_REASONS
from .core.protocol import ERROR_CODES

if TYPE_CHECKING:
    from .core.hub import Hub
    from .core.state import StateStore
    from .ingest.mqtt import MqttIngest
    from .looplag import LagWindow, LoopLag
    from .persist import PersistStats
    from .serve.stats import ServerStats

__all__ = ["GatewayCollector", "Metrics", "Served", "TopicCensus", "observe_many"]

#: topics counted between two checkpoints by a scrape's census (~0.5 us each: ~1 ms)
CENSUS_STEP = 2000


class Served(Protocol):
    """What the collector reads of the server (``serve.Server``), named here so that
    this module needs only the stats' type, not the server's."""

    @property
    def stats(self) -> ServerStats: ...

    @property
    def connections(self) -> int: ...


DISCONNECT_REASONS = METRIC_REASONS  # gateway/core/disconnect.py
SEND_FAILURE_REASONS = ("peer_gone", "closed", "os_error", "stalled")
SLOW_REASONS = ("stalled", "lagging")
HTTP_CUT_REASONS = ("client_gone", "write_timeout", "response_timeout", "busy", "error")
SNAPSHOT_REASONS = ("window", "ahead", "size")
INGEST_REJECT_REASONS = (
    "bad_json", "not_utf8", "too_large", "unsupported_json", "bad_timestamp", "unmapped",
    "reserved_topic", "bad_status", "bad_topic", "bad_field", "bad_value", "field_limit",
    "topic_limit", "internal_error",
)  # fmt: skip
HANDSHAKE_REASONS = (
    "origin", "auth", "forbidden", "limit_total", "limit_per_ip", "limit_rate", "timeout",
    "bad_request", "bad_upgrade", "not_websocket",
)  # fmt: skip
AUTH_FAILURE_REASONS = (
    "invalid", "expired", "not_yet_valid", "audience", "issuer", "claims", "algorithm",
    "signature", "malformed", "identity", "grants", "lifetime",
)  # fmt: skip
#: an error code of the protocol (core/protocol.py ERROR_CODES), or a limit
CLIENT_MESSAGE_LIMIT_REASONS = (
    "too_big", "binary", "rate", "bad_frame", "incomplete", "pending_bytes",
)  # fmt: skip
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def _counter(
    name: str,
    doc: str,
    label: str | None = None,
    values: Mapping[str, int] | int = 0,
    known: Iterable[str] = (),
) -> Metric:
    if label is None:
        assert isinstance(values, int)
        return CounterMetricFamily(name, doc, value=values)
    family = CounterMetricFamily(name, doc, labels=[label])
    assert not isinstance(values, int)
    for key in dict.fromkeys([*known, *values]):
        family.add_metric([key], values.get(key, 0))
    return family


class TopicCensus:
    """What a scrape reports of every topic: devices by presence and staleness, and
    topics whose reporting interval is learned. Counted in slices of
    :data:`CENSUS_STEP` topics with a checkpoint between them, just before the
    exposition is rendered: counted inside the collectors, one scrape held the event
    loop for 7 of its 11 ms at 10,000 topics (about ten times that at 100,000)."""

    __slots__ = ("devices", "learned", "store")

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.devices = dict.fromkeys(("online", "offline", "unknown", "stale"), 0)
        self.learned = 0

    async def refresh(self) -> None:
        states = list(self.store.states())  # topics may come and go between slices
        devices = dict.fromkeys(self.devices, 0)
        learned = 0
        for i in range(0, len(states), CENSUS_STEP):
            await trio.lowlevel.checkpoint()
            for ts in states[i : i + CENSUS_STEP]:
                if ts.interval:
                    learned += 1
                if ts.topic[:1] == "$":  # alarm topics are not devices
                    continue
                online = ts.online
                devices["unknown" if online is None else "online" if online else "offline"] += 1
                devices["stale"] += ts.stale
        self.devices, self.learned = devices, learned


class GatewayCollector(Collector):
    def __init__(
        self,
        server: Served,
        hub: Hub,
        store: StateStore,
        mqtt: Callable[[], MqttIngest | None],
        census: TopicCensus,
    ) -> None:
        self.server = server
        self.hub = hub
        self.store = store
        self.mqtt = mqtt
        self.census = census

    def collect(self) -> Iterator[Metric]:
        s = self.server.stats
        o = self.hub.stats
        st = self.store.stats
        info = GaugeMetricFamily(
            "gateway_build_info", "Build information (always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "gateway_websocket_connections",
            "Open WebSocket connections.",
            value=self.server.connections,
        )
        yield _counter(
            "gateway_websocket_connections_opened",
            "WebSocket connections accepted (after the upgrade).",
            values=s.connections_opened,
        )
        yield _counter(
            "gateway_websocket_disconnects",
            "WebSocket connections ended, by reason.",
            "reason",
            s.disconnects,
            DISCONNECT_REASONS,
        )
        yield _counter(
            "gateway_websocket_send_failures",
            "Writes that failed or stalled, by reason.",
            "reason",
            s.send_failures,
            SEND_FAILURE_REASONS,
        )
        yield _counter(
            "gateway_websocket_frames_sent", "WebSocket frames written.", values=s.frames_sent
        )
        yield _counter(
            "gateway_websocket_sent_bytes",
            "Bytes written to WebSocket clients.",
            values=s.bytes_sent,
        )
        yield _counter(
            "gateway_handshake_rejections",
            "HTTP/WebSocket handshakes refused, by reason.",
            "reason",
            s.handshake_rejected,
            HANDSHAKE_REASONS,
        )
        yield _counter(
            "gateway_http_responses_cut",
            "Plain-HTTP responses not written whole, by reason.",
            "reason",
            s.http_cut,
            HTTP_CUT_REASONS,
        )
        yield _counter(
            "gateway_auth_failures",
            "Tokens refused, by reason.",
            "reason",
            s.auth_failures,
            AUTH_FAILURE_REASONS,
        )
        yield _counter(
            "gateway_client_message_rejections",
            "Client messages refused, by reason (error code or limit).",
            "reason",
            s.inbound_rejected,
            (*ERROR_CODES, *CLIENT_MESSAGE_LIMIT_REASONS),
        )
        yield _counter(
            "gateway_internal_errors",
            "Connection handlers that failed (a bug: see the log).",
            values=s.internal_errors,
        )
        yield _counter(
            "gateway_outbox_coalesced_updates",
            "Topic updates folded into a later one for a lagging subscriber.",
            values=o.coalesced,
        )
        yield _counter(
            "gateway_outbox_lag_snapshots",
            "Subscribers so far behind that they received a full snapshot.",
            values=o.lag_snapshots,
        )
        yield _counter(
            "gateway_outbox_resume_snapshots",
            "Resumes whose topics had mostly changed: the stream's shared snapshot instead "
            "of one delta per topic.",
            values=o.resume_snapshots,
        )
        yield _counter(
            "gateway_outbox_snapshots_instead",
            "Snapshots sent where a delta was asked for, by reason.",
            "reason",
            st.snapshots_instead,
            SNAPSHOT_REASONS,
        )
        yield _counter(
            "gateway_outbox_slow_disconnects",
            "Subscribers closed with 4008, by reason.",
            "reason",
            o.slow,
            SLOW_REASONS,
        )
        yield _counter(
            "gateway_outbox_shared_frames",
            "Tick frames handed out as-is (encoded once, sent many times).",
            values=o.shared_frames,
        )
        yield _counter(
            "gateway_outbox_shared_catchups",
            "Lagging subscribers caught up with the missed ticks' shared frames.",
            values=o.caught_up_shared,
        )
        yield _counter(
            "gateway_outbox_personal_fragments",
            "Topic updates encoded for one subscriber (join with resume, catch-up, resync).",
            values=o.personal_fragments,
        )
        mqtt = self.mqtt()
        sources: dict[str, int] = {"simulator": 0, "mqtt": 0}
        rejected: dict[str, int] = dict(st.rejected)
        if mqtt is not None:
            sources["mqtt"] = mqtt.stats.messages["mqtt"]
            for reason, n in mqtt.stats.rejected.items():
                if reason not in st.rejected:  # the store's refusals are counted there
                    rejected[reason] = rejected.get(reason, 0) + n
        sources["simulator"] = max(0, st.messages - sources["mqtt"])
        yield _counter(
            "gateway_ingest_messages", "Device messages received, by source.", "source", sources
        )
        yield _counter(
            "gateway_ingest_rejections",
            "Device messages refused, by reason.",
            "reason",
            rejected,
            INGEST_REJECT_REASONS,
        )
        yield _counter(
            "gateway_state_changes", "Accepted topic changes (seq increments).", values=st.changes
        )
        yield _counter(
            "gateway_deadband_suppressed",
            "Field updates inside their deadband (not news).",
            values=st.deadband_suppressed,
        )
        yield _counter(
            "gateway_retained_unchanged",
            "Retained MQTT messages (the broker's stored copies, sent on subscribe) that "
            "repeated what the state holds: not taken as the device speaking.",
            values=st.retained_old,
        )
        if mqtt is not None:  # only with MQTT configured: no false "disconnected" alerts
            yield GaugeMetricFamily(
                "gateway_mqtt_connected",
                "1 while connected to the MQTT broker.",
                value=1 if mqtt.connected else 0,
            )
            yield _counter(
                "gateway_mqtt_reconnects",
                "MQTT reconnection attempts.",
                values=mqtt.stats.reconnects,
            )
        yield GaugeMetricFamily("gateway_topics", "Topics in the state.", value=len(self.store))
        devices = self.census.devices  # counted before the scrape (TopicCensus)
        family = GaugeMetricFamily(
            "gateway_devices",
            "Topics by presence (online, offline, unknown) and stale.",
            labels=["state"],
        )
        for state, n in devices.items():
            family.add_metric([state], n)
        yield family
        yield GaugeMetricFamily(
            "gateway_subscription_groups",
            "Distinct (filter, rate, grants) streams.",
            value=self.hub.groups,
        )


class LoopLagCollector(Collector):
    """``gateway_event_loop_lag_seconds`` and the last minute's maximum, read from the
    monitor at scrape time (looplag.py)."""

    def __init__(self, monitor: LoopLag, now: Callable[[], float]) -> None:
        self.monitor = monitor
        self.now = now

    def collect(self) -> Iterator[Metric]:
        monitor, now = self.monitor, self.now()
        yield _lag_histogram(
            "gateway_event_loop_lag_seconds",
            "How late a periodic sleeper wakes (event-loop lag); every timer, accept, "
            "heartbeat and tick is late by as much.",
            monitor.total,
        )
        yield GaugeMetricFamily(
            "gateway_event_loop_lag_max_seconds",
            "The largest event-loop lag seen in the last minute.",
            value=monitor.recent_max(now),
        )
        yield _lag_histogram(
            "gateway_event_loop_lag_running_seconds",
            "Each wake-up's lateness counting only what the loop's thread can have spent "
            "on the CPU (an upper bound of its CPU time from the due time to the wake-up): "
            "what the loop's own computing can account for. For the rest the thread was "
            "not on the CPU: the machine's stalls (CPU steal, other processes), or waiting "
            "for the GIL, a CPU quota or a blocking call.",
            monitor.running,
        )
        yield GaugeMetricFamily(
            "gateway_event_loop_lag_running_max_seconds",
            "The largest running part of an event-loop lag in the last minute.",
            value=monitor.recent_max(now, running=True),
        )


def _lag_histogram(name: str, doc: str, window: LagWindow) -> HistogramMetricFamily:
    from .looplag import BUCKETS

    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, n in zip([*BUCKETS, float("inf")], window.counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=window.sum)


class PersistCollector(Collector):
    """Checkpoints (persist.py): the last one's time, duration and size, failures."""

    def __init__(self, stats: PersistStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        from .persist import FAILURE_REASONS, LOAD_REASONS

        s = self.stats
        yield _counter("gateway_checkpoints", "Checkpoints written.", values=s.checkpoints)
        yield _counter(
            "gateway_checkpoint_failures",
            "Checkpoints not written, by reason (serving goes on).",
            "reason",
            s.failures,
            FAILURE_REASONS,
        )
        yield _counter(
            "gateway_checkpoint_bad_files",
            "Checkpoints found unusable at start, by reason (moved aside; started empty).",
            "reason",
            s.bad_files,
            LOAD_REASONS,
        )
        yield GaugeMetricFamily(
            "gateway_checkpoint_last_success_timestamp_seconds",
            "Wall-clock time of the last checkpoint written (0: none yet).",
            value=s.last_success,
        )
        yield GaugeMetricFamily(
            "gateway_checkpoint_duration_seconds",
            "How long the last checkpoint took, encoding to directory fsync.",
            value=s.last_duration_s,
        )
        yield GaugeMetricFamily(
            "gateway_checkpoint_bytes", "Size of the last checkpoint written.", value=s.last_bytes
        )
        yield GaugeMetricFamily(
            "gateway_restored_topics",
            "Topics restored from a checkpoint at start (stale until refreshed).",
            value=s.restored_topics,
        )


def observe_many(hist: Histogram, values: Iterable[float]) -> None:
    """``hist.observe(v)`` for every ``v``, with one locked increment per bucket hit
    instead of a Python walk of the bounds and two locked increments per value (the
    shell observes thousands of latencies a second). Uses the unlabelled histogram's
    own bucket and sum values; without them (another prometheus_client), observes one
    by one."""
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values:
            hist.observe(v)
        return
    counts = [0] * len(bounds)
    added = 0.0
    for v in values:
        added += v
        if v == v:  # NaN falls in no bucket, as in observe()
            counts[bisect_left(bounds, v)] += 1
    total.inc(added)
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


class Metrics:
    """The registry, the collector and the histograms the shell observes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.census: TopicCensus | None = None  # set by attach()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.tick_seconds = Histogram(
            "gateway_tick_duration_seconds",
            "Time to run one hub tick and write its frames.",
            buckets=TICK_BUCKETS,
            registry=r,
        )
        self.device_to_send = Histogram(
            "gateway_device_to_send_seconds",
            "Device timestamp to frame written, per topic per tick (subscribers in sync; "
            "at most 256 topics a tick, evenly spread).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_to_send = Histogram(
            "gateway_ingest_to_send_seconds",
            "Gateway receive time to frame written, per topic per tick (subscribers in sync; "
            "at most 256 topics a tick, evenly spread).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.subscriber_data_age = Histogram(
            "gateway_subscriber_data_age_seconds",
            "How old the data waiting for a subscriber is, per subscriber per sweep (0.5 s).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def attach(
        self, server: Served, hub: Hub, store: StateStore, mqtt: Callable[[], MqttIngest | None]
    ) -> None:
        self.census = TopicCensus(store)
        self.registry.register(GatewayCollector(server, hub, store, mqtt, self.census))

    def attach_loop_lag(self, monitor: LoopLag, now: Callable[[], float]) -> None:
        self.registry.register(LoopLagCollector(monitor, now))

    def attach_persist(self, stats: PersistStats) -> None:
        self.registry.register(PersistCollector(stats))

    async def exposition(self) -> tuple[bytes, bytes]:
        if self.census is not None:
            await self.census.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()
