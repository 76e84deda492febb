"""Prometheus metrics: the only module that imports prometheus_client; registry injected."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from ingest.bulk import Outcome

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Pipeline counters; bound children are kept so the hot path only calls `inc`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.webhooks = Counter(
            "ingest_webhooks", "Webhook events and requests by outcome (events for accepted, "
            "duplicate and quarantined; requests for every refusal)", ["outcome"],
            registry=self.registry)
        self.unpriced = Counter(
            "ingest_unpriced_events", "Accepted events whose model has no known price",
            registry=self.registry)
        self.bulk_items = Counter(
            "ingest_bulk_items", "Bulk items by outcome (indexed, conflict: already there, "
            "retried, dead_lettered)", ["outcome"], registry=self.registry)
        self.bulk_duration = Histogram(
            "ingest_bulk_duration_seconds", "Bulk request duration, failures included",
            registry=self.registry)
        self.bulk_failures = Counter(
            "ingest_bulk_failures", "Bulk requests that failed as a whole", registry=self.registry)
        self.sink_up = Gauge("ingest_sink_up", "1 while the last bulk request succeeded",
                             registry=self.registry)
        self.accepted = self.webhooks.labels("accepted")
        self.duplicate = self.webhooks.labels("duplicate")
        self.quarantined = self.webhooks.labels("quarantined")

    def refused(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def bulk_done(self, outcome: Outcome | None, seconds: float) -> None:
        """One bulk request finished: `outcome` is None when it failed as a whole."""
        self.bulk_duration.observe(seconds)
        if outcome is None:
            self.bulk_failures.inc()
            self.sink_up.set(0)
            return
        self.sink_up.set(0 if outcome.blocked else 1)
        for name, count in (("indexed", len(outcome.shipped) - outcome.conflicts),
                            ("conflict", outcome.conflicts), ("retried", len(outcome.retry)),
                            ("dead_lettered", len(outcome.dead))):
            if count:
                self.bulk_items.labels(name).inc(count)
