"""Metrics of alarms, chart history and stale-by-default, read at scrape time.

Labels are severities, states and reasons only (every value exported from the
start, at 0); never a rule, topic or device. docs/metrics.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core.alarms import SEVERITIES, STATES, AlarmEngine
from .core.history import History

if TYPE_CHECKING:
    from .metrics import TopicCensus

__all__ = ["InsightCollector"]


class InsightCollector(Collector):
    def __init__(self, alarms: AlarmEngine, history: History, census: TopicCensus) -> None:
        self.alarms = alarms
        self.history = history
        self.census = census

    def collect(self) -> Iterator[Metric]:
        active, unacked = self.alarms.counts()
        for name, doc, values in (
            ("gateway_alarms_active", "Alarms active (acknowledged or not).", active),
            (
                "gateway_alarms_unacknowledged",
                "Alarms waiting for an acknowledgement (active or cleared).",
                unacked,
            ),
        ):
            g = GaugeMetricFamily(name, doc, labels=["severity"])
            for sev in SEVERITIES:
                g.add_metric([sev], values[sev])
            yield g
        st = self.alarms.stats
        t = CounterMetricFamily(
            "gateway_alarm_transitions",
            "Alarm state changes, by severity and the state entered.",
            labels=["severity", "state"],
        )
        for sev in SEVERITIES:
            for state in STATES:
                t.add_metric([sev, state], st.transitions.get((sev, state), 0))
        yield t
        acks = CounterMetricFamily(
            "gateway_alarm_acks",
            "Alarm acknowledgement requests by result (acknowledged, retry, refused).",
            labels=["result"],
        )
        acks.add_metric(["acknowledged"], st.acks)
        acks.add_metric(["retry"], st.ack_retries)
        acks.add_metric(["refused"], st.ack_refused)
        yield acks
        yield CounterMetricFamily(
            "gateway_alarm_write_failures",
            "Alarm states the store refused (alarm topic too long, topic limit).",
            value=st.write_failures,
        )
        hs = self.history.stats
        yield GaugeMetricFamily(
            "gateway_history_series", "Chart history series (topic, field).", value=hs.series
        )
        yield GaugeMetricFamily(
            "gateway_history_bytes",
            "Bytes of chart history buffers (bounded by history.max_bytes).",
            value=hs.bytes,
        )
        dropped = CounterMetricFamily(
            "gateway_history_dropped_series",
            "History series not kept because of history.max_bytes: refused (new series) "
            "or evicted (an idle one, to make room).",
            labels=["reason"],
        )
        dropped.add_metric(["refused"], hs.refused)
        dropped.add_metric(["evicted"], hs.evicted)
        yield dropped
        yield GaugeMetricFamily(
            "gateway_stale_learned_topics",
            "Topics whose reporting interval is learned (stale by default applies).",
            value=self.census.learned,  # counted before the scrape
        )
