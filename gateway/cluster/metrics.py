"""Metrics of ``gateway run --workers N``, on the parent's admin port.

Each worker serves its own admin port (``server.admin_port + 1 + i``, or a free one
when the admin port is 0) with the serving metrics of its screens; the parent's
admin port has the ingest, the state, the alarms and these. docs/metrics.md lists
them; labels are fixed sets, every value exported from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .parent import Cluster

__all__ = ["ClusterCollector"]


class ClusterCollector(Collector):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        c = self.cluster
        s = c.stats
        g = GaugeMetricFamily(
            "gateway_cluster_workers",
            "Worker processes by state (serving: synced and listening; starting: not yet).",
            labels=["state"],
        )
        g.add_metric(["serving"], c.serving)
        g.add_metric(["starting"], len(c.slots) - c.serving)
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
            "gateway_cluster_channel_queued_bytes",
            "Bytes queued for the worker furthest behind (capped by worker_channel_bytes).",
            value=c.queued_bytes(),
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
