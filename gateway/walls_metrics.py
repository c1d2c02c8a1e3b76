"""Metrics of the wall registry (gateway/core/walls.py), read at scrape time.

Labels are states, reasons, actions and results (every value exported from the
start, at 0); a wall's own name only when the operator asks for it
(``walls.metrics_per_wall``: that many walls, the worst first). docs/metrics.md lists
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core.walls import ACTIONS, Walls

__all__ = ["WallsCollector"]

REFUSALS = ("too_soon", "full")
ACK_RESULTS = ("ok", "failed", "unknown")


class WallsCollector(Collector):
    def __init__(self, walls: Walls, now: Callable[[], float]) -> None:
        self.walls = walls
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now()
        g = GaugeMetricFamily(
            "gateway_walls",
            "Walls in the registry by state (gone ones for walls.gone_keep_s).",
            labels=["state"],
        )
        for state, count in self.walls.counts(now).items():
            g.add_metric([state], count)
        yield g
        st = self.walls.stats
        yield CounterMetricFamily("gateway_wall_reports", "Wall reports taken.", value=st.reports)
        refused = CounterMetricFamily(
            "gateway_wall_reports_refused",
            "Wall reports refused by the registry: too_soon, full.",
            labels=["reason"],
        )
        for reason in REFUSALS:
            refused.add_metric([reason], st.refused.get(reason, 0))
        yield refused
        actions = CounterMetricFamily(
            "gateway_wall_actions", "Remote actions sent to walls.", labels=["action"]
        )
        for action in ACTIONS:
            actions.add_metric([action], st.actions.get(action, 0))
        yield actions
        acks = CounterMetricFamily(
            "gateway_wall_action_acks",
            "Walls' answers to actions: ok, failed, unknown (no such action).",
            labels=["result"],
        )
        for result in ACK_RESULTS:
            acks.add_metric([result], st.acks.get(result, 0))
        yield acks
        cap = self.walls.cfg.metrics_per_wall
        if cap:
            behind = GaugeMetricFamily(
                "gateway_wall_behind_seconds",
                "How far a wall is behind the gateway (walls.metrics_per_wall walls, worst first).",
                labels=["wall"],
            )
            healthy = GaugeMetricFamily(
                "gateway_wall_healthy",
                "1 when the wall is healthy, else 0 (walls.metrics_per_wall walls, worst first).",
                labels=["wall"],
            )
            for row in self.walls.listing(now)[:cap]:
                behind.add_metric([row["name"]], row["behind_s"])
                healthy.add_metric([row["name"]], 1.0 if row["state"] == "healthy" else 0.0)
            yield behind
            yield healthy
