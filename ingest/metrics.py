"""Prometheus metrics: the only module that imports prometheus_client; registry injected."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.accepted = self.webhooks.labels("accepted")
        self.duplicate = self.webhooks.labels("duplicate")
        self.quarantined = self.webhooks.labels("quarantined")

    def refused(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
