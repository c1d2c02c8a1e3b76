"""Metrics of ``gateway run --workers N``, on the parent's admin port.

Each worker serves its own admin port (``server.admin_port + 1 + i``, or a free one
when the admin port is 0) with the serving metrics of its screens; the parent's
admin port has the ingest, the state, the alarms and these. docs/metrics.md lists
them; labels are fixed sets, every value exported from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["RESTART_REASONS", "ClusterCollector", "ClusterStats"]

RESTART_REASONS: Final = ("exited", "overflow", "hung")


@dataclass
class ClusterStats:
    workers: int = 0
    serving: Callable[[], int] = lambda: 0  # workers synced and listening
    queued_bytes: Callable[[], int] = lambda: 0  # for the worker furthest behind
    screens: Callable[[], int] = lambda: 0  # open on all workers (their reports)
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))
    batches: int = 0
    records: int = 0
    stream_bytes: int = 0  # change stream bytes encoded (once for every worker)
    sync_bytes: int = 0  # full-sync bytes (per worker started)


class ClusterCollector(Collector):
    def __init__(self, stats: ClusterStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        g = GaugeMetricFamily(
            "gateway_cluster_workers",
            "Worker processes by state (serving: synced and listening; starting: not yet).",
            labels=["state"],
        )
        serving = s.serving()
        g.add_metric(["serving"], serving)
        g.add_metric(["starting"], s.workers - serving)
        yield g
        r = CounterMetricFamily(
            "gateway_cluster_worker_restarts",
            "Workers restarted, by reason (exited: died or stopped; overflow: fell more "
            "than server.worker_channel_bytes behind and was killed).",
            labels=["reason"],
        )
        for reason, n in s.restarts.items():
            r.add_metric([reason], n)
        yield r
        yield GaugeMetricFamily(
            "gateway_cluster_screens",
            "Screens open on all workers together (each reports at most once a second).",
            value=s.screens(),
        )
        yield GaugeMetricFamily(
            "gateway_cluster_channel_queued_bytes",
            "Bytes queued for the worker furthest behind (capped by worker_channel_bytes).",
            value=s.queued_bytes(),
        )
        yield CounterMetricFamily(
            "gateway_cluster_stream_bytes",
            "Bytes of the change stream encoded (once, then sent to every worker).",
            value=s.stream_bytes,
        )
        yield CounterMetricFamily(
            "gateway_cluster_stream_records",
            "Topic records in the change stream (changed topics, coalesced per batch).",
            value=s.records,
        )
        yield CounterMetricFamily(
            "gateway_cluster_sync_bytes",
            "Bytes of full syncs sent to starting workers.",
            value=s.sync_bytes,
        )
