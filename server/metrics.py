"""Prometheus metrics: request counters per process, campaign gauges read from the database.

Counters live in a registry owned by the app (no module globals). Under gunicorn each worker
counts its own requests; campaign gauges come from the database, so any worker reports them right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self, campaign_rows: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "overdrive_polls", "Vehicle polls by outcome", ["outcome"], registry=self.registry
        )
        self.assignments = Counter(
            "overdrive_assignments", "Signed assignments handed out", registry=self.registry
        )
        self.events = Counter(
            "overdrive_vehicle_events",
            "Vehicle events stored, by type",
            ["type"],
            registry=self.registry,
        )
        self.registry.register(_CampaignCollector(campaign_rows))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CampaignCollector(Collector):
    def __init__(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        stage = GaugeMetricFamily(
            "overdrive_campaign_stage", "Current stage index", labels=["campaign", "state"]
        )
        members = GaugeMetricFamily(
            "overdrive_campaign_vehicles",
            "Campaign vehicles by status",
            labels=["campaign", "status"],
        )
        for row in self.rows():
            stage.add_metric([row["id"], row["state"]], row["stage_index"])
            for status, count in row["counts"].items():
                members.add_metric([row["id"], status], count)
        yield stage
        yield members
