"""Prometheus metrics of the whole server: request and vehicle counters summed over every
gunicorn worker, and gauges read from the database once per scrape.

* Counters (polls, assignments, vehicle events, HTTP requests and their durations) are counted
  by the process that serves the request. Under gunicorn with several workers,
  ``overdrive server run`` gives the workers a private ``PROMETHEUS_MULTIPROC_DIR``: each worker
  writes its counts to its own files there, and a scrape, whichever worker answers it, sums
  them all (:class:`~prometheus_client.multiprocess.MultiProcessCollector`); a dead worker's
  counts stay in the totals, so counters never go down. With one process (the development
  server, tests) the counters live in the app's own registry.
* Gauges are facts of the database (campaigns per state, memberships of active campaigns per
  status, registered vehicles): a collector queries them when scraped, in the worker that
  answers, so they are reported once, never once per worker.
* ``/metrics`` needs no credentials, so no label carries an identifier (campaign, vehicle or
  token id): labels are states, statuses, outcomes, event types, route names, methods and
  HTTP status codes, all from fixed sets.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from overdrive.server.models import (
    ABORTED,
    ACTIVE_STATES,
    COMPLETED,
    DRAFT,
    PAUSED,
    RUNNING,
    Campaign,
    Membership,
    Vehicle,
)

log = logging.getLogger("overdrive.server")

#: Where the workers of one ``server run`` keep their counters (set by ``server run`` only).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CAMPAIGN_STATES = (DRAFT, RUNNING, PAUSED, COMPLETED, ABORTED)
#: The methods counted by name; any other (clients may send anything) is counted as OTHER.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The WSGI environ key under which the Flask app leaves the route's endpoint name.
ENDPOINT_KEY = "overdrive.endpoint"
#: Requests that never reach Flask are vehicle polls answered by ``server.fastpath``.
FAST_PATH_ENDPOINT = "vehicles.poll"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def multiprocess_dir() -> str | None:
    """The shared counters' directory when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass
class DatabaseSummary:
    """What the gauges report, counted in the database (no identifiers)."""

    campaigns: dict[str, int] = field(default_factory=dict)
    """Campaigns per state."""
    memberships: dict[tuple[str, bool], int] = field(default_factory=dict)
    """Memberships of running or paused campaigns per (status, admitted)."""
    vehicles: int = 0
    """Registered vehicles."""


def database_summary(session: Session) -> DatabaseSummary:
    """Three grouped counts: campaigns by state, active memberships by status, vehicles."""
    campaigns = session.execute(select(Campaign.state, func.count()).group_by(Campaign.state))
    memberships = session.execute(
        select(Membership.status, Membership.admitted, func.count())
        .join(Campaign, Campaign.id == Membership.campaign_id)
        .where(Campaign.state.in_(ACTIVE_STATES))
        .group_by(Membership.status, Membership.admitted)
    )
    return DatabaseSummary(
        campaigns={state: count for state, count in campaigns},
        memberships={(status, bool(admitted)): count for status, admitted, count in memberships},
        vehicles=session.scalar(select(func.count()).select_from(Vehicle)) or 0,
    )


class Metrics:
    """The server's metrics; ``summary`` reads the database's gauges (called per scrape)."""

    def __init__(self, summary: Callable[[], DatabaseSummary]) -> None:
        self.directory = multiprocess_dir()
        if self.directory is not None:
            _use_multiprocess_values()
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "overdrive_polls",
            "Vehicle polls answered, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.assignments = Counter(
            "overdrive_assignments", "Signed assignments handed out", registry=self.registry
        )
        self.unknown_ecu_reports = Counter(
            "overdrive_unknown_ecu_reports",
            "ECU version reports ignored because their serial is no ECU of the vehicle",
            registry=self.registry,
        )
        self.events = Counter(
            "overdrive_vehicle_events",
            "Vehicle events stored, by type",
            ["type"],
            registry=self.registry,
        )
        self.requests = Counter(
            "overdrive_http_requests",
            "HTTP requests answered, by route (endpoint name), method and status code",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "overdrive_http_request_duration_seconds",
            "Time to answer an HTTP request, by route (endpoint name)",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.database = DatabaseCollector(summary)
        if self.directory is None:
            self.registry.register(self.database)

    def record_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request."""
        method = method if method in METHODS else "OTHER"
        self.requests.labels(endpoint, method, str(status)).inc()
        self.durations.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition: every worker's counters, the database's gauges."""
        if self.directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        registry.register(self.database)
        return generate_latest(registry)


def _use_multiprocess_values() -> None:
    """Make counters write to the shared directory even if prometheus_client was imported
    before ``PROMETHEUS_MULTIPROC_DIR`` was set (it reads the variable once, at import):
    otherwise each worker would silently report only its own counts."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class DatabaseCollector(Collector):
    """Gauges from the database, queried at scrape time; ``overdrive_database_up`` says whether
    that worked (a database outage must not make the whole scrape fail)."""

    def __init__(self, summary: Callable[[], DatabaseSummary]) -> None:
        self.summary = summary

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "overdrive_database_up", "Whether the database answered this scrape's queries"
        )
        try:
            summary = self.summary()
        except Exception as e:
            log.warning("metrics: cannot read the database: %s", type(e).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        campaigns = GaugeMetricFamily(
            "overdrive_campaigns", "Campaigns, by state", labels=["state"]
        )
        for state in (*CAMPAIGN_STATES, *sorted(set(summary.campaigns) - set(CAMPAIGN_STATES))):
            campaigns.add_metric([state], summary.campaigns.get(state, 0))
        yield campaigns
        members = GaugeMetricFamily(
            "overdrive_campaign_vehicles",
            "Vehicles (memberships) of running or paused campaigns, by status and whether "
            "admitted yet",
            labels=["status", "admitted"],
        )
        from overdrive.server.vehicles import EVENT_TYPES  # not at import: it needs the context

        # Every status a membership can have (pending, then what its vehicle last reported).
        counts = {(status, True): 0 for status in ("pending", *EVENT_TYPES)}
        counts[("pending", False)] = 0
        counts.update(summary.memberships)
        for (status, admitted), count in sorted(counts.items()):
            members.add_metric([status, "true" if admitted else "false"], count)
        yield members
        vehicles = GaugeMetricFamily("overdrive_vehicles", "Registered vehicles")
        vehicles.add_metric([], summary.vehicles)
        yield vehicles


class RequestMetrics:
    """WSGI middleware, outermost: counts every answered request and its duration, by the
    endpoint Flask matched (left in ``environ[ENDPOINT_KEY]``), ``unmatched`` for a URL no route
    matches, and :data:`FAST_PATH_ENDPOINT` for the polls answered below Flask."""

    def __init__(self, app: WsgiApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        status: list[int] = []

        def recording(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[:] = [_status_code(code)]
            return start_response(code, headers, exc_info)

        try:
            return self.app(environ, recording)
        finally:
            self.metrics.record_request(
                environ.get(ENDPOINT_KEY, FAST_PATH_ENDPOINT),
                environ.get("REQUEST_METHOD", ""),
                status[0] if status else 500,
                time.perf_counter() - started,
            )


def _status_code(status: str) -> int:
    code = status.split(" ", 1)[0]
    return int(code) if code.isdigit() else 500
