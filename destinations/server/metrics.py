"""Prometheus metrics of one app: its own registry, so two apps in a process (tests) never share counts.

Counts from the intake are kept as they happen; delivery counts, outbox depth and the age of the
oldest pending request are read when Prometheus scrapes, so they cost nothing between scrapes and
show the outbox as it is, whichever process (serve or worker) delivers from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..delivery import IntakeReport, Outcome

log = logging.getLogger("destinations.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
# Intake requests take milliseconds; a direct-mode webhook waits for the vendors, up to their timeouts.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Scraped(Collector):
    """Outbox and worker figures, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        outcomes = {
            kind: CounterMetricFamily(f"destinations_requests_{kind}", text, labels=["destination"])
            for kind, text in (
                ("delivered", "Vendor requests delivered (2xx and no error in the body)."),
                ("retried", "Vendor request attempts that failed and will be tried again."),
                ("dead", "Vendor requests given up on (permanent failure or past the retry window)."),
            )
        }
        counts = m.outcome_counts()
        for kind, family in outcomes.items():
            for name in m.destinations:
                family.add_metric([name], counts[kind][name])
            yield family
        if m.outbox_stats is None:
            return
        depth = GaugeMetricFamily(
            "destinations_outbox_depth",
            "Requests waiting in the outbox (pending, retries included).",
            labels=["destination"],
        )
        retrying = GaugeMetricFamily(
            "destinations_outbox_retrying", "Pending requests that have failed at least once.", labels=["destination"]
        )
        dead = GaugeMetricFamily(
            "destinations_outbox_dead", "Dead requests kept in the outbox.", labels=["destination"]
        )
        age = GaugeMetricFamily(
            "destinations_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending request (0 when none).",
            labels=["destination"],
        )
        try:
            stats = m.outbox_stats()
        except Exception:  # a busy or missing file must not break the scrape of everything else
            log.warning("reading outbox statistics failed", exc_info=True)
            stats = {}
        inbox = GaugeMetricFamily("destinations_inbox_depth", "Accepted events not yet mapped into vendor requests.")
        try:
            inbox.add_metric([], float(m.inbox_count()) if m.inbox_count else 0.0)
        except Exception:
            log.warning("reading the inbox depth failed", exc_info=True)
        yield inbox
        ok = GaugeMetricFamily("destinations_outbox_readable", "1 when the outbox statistics could be read.")
        ok.add_metric([], 1.0 if stats or not m.destinations else 0.0)
        for name in sorted(set(m.destinations) | set(stats)):
            s = stats.get(name, {})
            depth.add_metric([name], s.get("pending", 0))
            retrying.add_metric([name], s.get("retrying", 0))
            dead.add_metric([name], s.get("dead", 0))
            age.add_metric([name], s.get("oldest_pending_age", 0.0))
        yield from (depth, retrying, dead, age, ok)


class Metrics:
    """Every metric of one app."""

    def __init__(
        self,
        destinations: Iterable[str],
        *,
        outbox_stats: Callable[[], dict[str, dict[str, Any]]] | None = None,
        delivery_counts: Callable[[], dict[str, Tally[str]]] | None = None,
        inbox_count: Callable[[], int] | None = None,
    ) -> None:
        self.destinations = sorted(destinations)
        self.outbox_stats = outbox_stats
        self.inbox_count = inbox_count
        self.delivery_counts = delivery_counts
        self._direct: dict[str, Tally[str]] = {"delivered": Tally(), "retried": Tally(), "dead": Tally()}
        self._lock = threading.Lock()
        r = self.registry = CollectorRegistry()
        self.received = Counter("destinations_events_received", "Events received, by way in.", ["source"], registry=r)
        self.accepted = Counter(
            "destinations_events_accepted", "Events accepted and committed, by way in.", ["source"], registry=r
        )
        self.rejected = Counter(
            "destinations_events_rejected",
            "Events refused to the client (not valid for the Segment spec, or over a limit).",
            ["source"],
            registry=r,
        )
        self.requests_accepted = Counter(
            "destinations_requests_accepted", "Vendor requests committed to the outbox.", ["destination"], registry=r
        )
        self.filtered = Counter(
            "destinations_events_filtered",
            "Events deliberately not sent to a destination (integrations, unsupported call).",
            ["destination"],
            registry=r,
        )
        self.invalid = Counter(
            "destinations_events_invalid",
            "Events a destination cannot send as its vendor requires (the rest still get them).",
            ["destination"],
            registry=r,
        )
        self.upstream = Counter(
            "destinations_upstream_requests",
            "Transformer requests passed to rudder-transformer ([rudder] upstream), by route and its answer's status.",
            ["route", "status"],
            registry=r,
        )
        self.unsupported = Counter(
            "destinations_events_unsupported",
            "Calls no destination takes (Segment's delete), answered as taken and set aside, by way in and type.",
            ["source", "type"],
            registry=r,
        )
        self.warnings = Counter(
            "destinations_mapping_warnings",
            "Optional values left out of a vendor request because they could not be read, by destination"
            " instance and field (the message was still sent).",
            ["destination", "field"],
            registry=r,
        )
        self.duplicates = Counter(
            "destinations_requests_duplicate",
            "Vendor requests already in the outbox (a message sent twice).",
            registry=r,
        )
        self.http = Histogram(
            "destinations_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status.",
            ["method", "route", "status"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.vendor = Histogram(
            "destinations_vendor_request_duration_seconds",
            "Time of one call to a vendor, by destination and outcome.",
            ["destination", "outcome"],
            buckets=_BUCKETS,
            registry=r,
        )
        for source in ("tracking", "webhook"):
            for c in (self.received, self.accepted, self.rejected):
                c.labels(source)
        for name in self.destinations:
            for c in (self.requests_accepted, self.filtered, self.invalid):
                c.labels(name)
        r.register(_Scraped(self))

    # -- recording

    def intake(self, source: str, received: int, rejected: int, report: IntakeReport | None) -> None:
        self.received.labels(source).inc(received)
        if rejected:
            self.rejected.labels(source).inc(rejected)
        if report is None:
            return
        self.accepted.labels(source).inc(report.messages)
        self.mapped(report)

    def mapped(self, report: IntakeReport) -> None:
        """What mapping made of accepted events, per destination (the Delivery's `on_mapped` callback)."""
        for name, n in report.accepted.items():
            self.requests_accepted.labels(name).inc(n)
        for name, n in report.filtered.items():
            self.filtered.labels(name).inc(n)
        for name, n in report.invalid.items():
            self.invalid.labels(name).inc(n)
        for (name, field), n in report.warnings.items():
            self.warnings.labels(name, field).inc(n)
        if report.duplicates:
            self.duplicates.inc(report.duplicates)

    def forwarded(self, route: str, status: int) -> None:
        """A request passed to rudder-transformer, and the status it answered (503 when it did not)."""
        self.upstream.labels(route, str(status)).inc()

    def observe_vendor(self, destination: str, outcome: Outcome, seconds: float) -> None:
        """The Delivery's `observe` callback (and direct mode's): one call to a vendor."""
        self.vendor.labels(destination, outcome.kind).observe(seconds)

    def direct_outcome(self, destination: str, kind: str, n: int = 1) -> None:
        """A request sent by direct mode (not through the outbox): delivered, retried or dead."""
        with self._lock:
            self._direct[kind][destination] += n

    def outcome_counts(self) -> dict[str, Tally[str]]:
        with self._lock:
            out = {kind: Tally(t) for kind, t in self._direct.items()}
        if self.delivery_counts is not None:
            for kind, tally in self.delivery_counts().items():
                out[kind].update(tally)
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimingMiddleware:
    """Request latency by route template (never the raw path: one series per route, not per URL)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "(unmatched)"
            method = scope.get("method", "")
            self.metrics.http.labels(method if method in _METHODS else "OTHER", path, str(status)).observe(
                time.perf_counter() - started
            )
