"""Prometheus metrics: the only module that imports prometheus_client; registry injected."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ingest.records import status_class

if TYPE_CHECKING:
    from ingest.records import Outcome, Row

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MODEL_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,79}")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Per (model, status): the requests key, then the token and cost keys of that model.
_Keys = tuple[tuple[str, str], tuple[str, str], tuple[str, str], tuple[str, str], tuple[str, str]]


class Metrics:
    """Pipeline counters; bound children are kept so the hot path only calls `inc`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.webhooks = Counter(
            "ingest_webhooks", "Webhook events and requests by outcome (events for accepted, "
            "duplicate and quarantined; requests for every refusal, with the error code as "
            "reason)", ["outcome", "reason"], registry=self.registry)
        self.relay = RelayTraffic()
        self.registry.register(self.relay)
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
        for name in ("indexed", "conflict", "retried", "dead_lettered"):
            # Present at 0 from the start, so increase() sees the very first dead letter.
            self.bulk_items.labels(name)
        self.connections = Gauge("ingest_http_connections", "Open HTTP connections",
                                 registry=self.registry)
        self.connections_closed = Counter(
            "ingest_http_connections_closed", "Connections the receiver cut, by reason: "
            "header_timeout (no complete request headers within INGEST_HEADER_TIMEOUT), "
            "body_timeout (no complete body within INGEST_BODY_TIMEOUT after them), evicted "
            "(the longest idle one, for a new connection at INGEST_MAX_CONNECTIONS)",
            ["reason"], registry=self.registry)
        self.connections_refused = Counter(
            "ingest_http_connections_refused", "Connections answered 503 at once: "
            "INGEST_MAX_CONNECTIONS were open, each with a request in flight",
            registry=self.registry)
        for reason in ("header_timeout", "body_timeout", "evicted"):
            self.connections_closed.labels(reason)
        self.accepted = self.webhooks.labels("accepted", "")
        self.duplicate = self.webhooks.labels("duplicate", "")
        self.quarantined = self.webhooks.labels("quarantined", "")

    def refused(self, outcome: str, reason: str) -> None:
        self.webhooks.labels(outcome, reason).inc()

    def connections_open(self, count: int) -> None:
        self.connections.set(count)

    def connection_cut(self, reason: str) -> None:
        self.connections_closed.labels(reason).inc()

    def connection_refused(self) -> None:
        self.connections_refused.inc()

    def watch_store(self, read: Callable[[], dict[str, float]]) -> None:
        """Expose `ingest_store_events{state}` and the shipping lag, read at scrape time."""
        self.registry.register(_StoreGauges(read))

    def watch_relay_quota(self, reasons: Sequence[str]) -> RelayQuota:
        """Expose the relay's quota (once polled) and poll failures by `reasons`, from now on."""
        quota = RelayQuota(reasons)
        self.registry.register(quota)
        return quota

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


class RelayTraffic(Collector):
    """The relay's own traffic, from accepted events, in plain dicts read at scrape time.

    A custom collector because the hot path then only adds to dict entries: a labelled
    prometheus_client child per update cost several times more per event.
    """

    def __init__(self, model_limit: int = 50) -> None:
        self.model_limit = model_limit
        self._models: dict[str, str] = {}
        self.requests: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost: dict[tuple[str, str], float] = {}
        self.latency: dict[str, list[float]] = {}  # per-bucket counts, then +Inf, sum
        self._keys: dict[tuple[str | None, int | None], _Keys] = {}

    def model(self, name: str | None) -> str:
        """Bounded label values: the first `model_limit` sane names, then `other`."""
        if name is None:
            return "unknown"
        found = self._models.get(name)
        if found is None:
            sane = _MODEL_LABEL.fullmatch(name) is not None
            found = name if sane and len(self._models) < self.model_limit else "other"
            if len(self._models) < 10 * self.model_limit:
                self._models[name] = found
        return found

    def observe(self, rows: Sequence[Row], inserted: Sequence[bool]) -> None:
        """Count each new event once; duplicates were counted when they first arrived."""
        requests, tokens, cost, latency = self.requests, self.tokens, self.cost, self.latency
        keys = self._keys
        for row, new in zip(rows, inserted, strict=True):
            if not new:
                continue
            # One cached key tuple per (model, status): no strings built per event.
            try:
                key, prompt, completion, relay, computed = keys[row.model, row.status_code]
            except KeyError:
                key, prompt, completion, relay, computed = self._key(row.model, row.status_code)
            requests[key] = requests.get(key, 0) + 1
            if row.latency_ms is not None:
                seconds = row.latency_ms / 1000
                buckets = latency.get(key[0])
                if buckets is None:
                    buckets = latency[key[0]] = [0.0] * (len(LATENCY_BUCKETS) + 2)
                buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
                buckets[-1] += seconds
            if row.prompt_tokens:
                tokens[prompt] = tokens.get(prompt, 0) + row.prompt_tokens
            if row.completion_tokens:
                tokens[completion] = tokens.get(completion, 0) + row.completion_tokens
            if row.cost_usd is not None:
                cost[relay] = cost.get(relay, 0.0) + row.cost_usd
            if row.computed_cost_usd is not None:
                cost[computed] = cost.get(computed, 0.0) + row.computed_cost_usd

    def _key(self, name: str | None, status: int | None) -> _Keys:
        model = self.model(name)
        klass = status_class(status)
        found = ((model, klass), (model, "prompt"), (model, "completion"), (model, "relay"),
                 (model, "computed"))
        if len(self._keys) < 20 * self.model_limit:  # bounded like the model names
            self._keys[name, status] = found
        return found

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "holysheep_relay_requests", "Relay requests by model and status class (429 apart), "
            "counted once per event id", labels=["model", "status_class"])
        for (model, klass), count in sorted(self.requests.items()):
            requests.add_metric([model, klass], count)
        yield requests
        latency = HistogramMetricFamily(
            "holysheep_relay_latency_seconds", "Relay request latency as the relay reported it",
            labels=["model"])
        for model, counts in sorted(self.latency.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, in_bucket in zip((*LATENCY_BUCKETS, float("inf")), counts[:-1],
                                        strict=True):
                running += in_bucket
                cumulative.append((_bound(bound), running))
            latency.add_metric([model], cumulative, sum_value=counts[-1])
        yield latency
        tokens = CounterMetricFamily("holysheep_relay_tokens", "Tokens by model and kind",
                                     labels=["model", "kind"])
        for (model, kind), count in sorted(self.tokens.items()):
            tokens.add_metric([model, kind], count)
        yield tokens
        cost = CounterMetricFamily(
            "holysheep_relay_cost_usd", "Spend in USD: source=relay as the relay reported it, "
            "source=computed from the price book", labels=["model", "source"])
        for (model, source), usd in sorted(self.cost.items()):
            cost.add_metric([model, source], usd)
        yield cost


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class _StoreGauges(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        events = GaugeMetricFamily("ingest_store_events", "Events in the local store by "
                                   "shipping state", labels=["state"])
        for state in ("pending", "shipped", "dead"):
            if state in values:
                events.add_metric([state], values[state])
        yield events
        if "unindexed" in values:
            yield GaugeMetricFamily("ingest_store_unindexed_events", "Stored events not in the "
                                    "search and report tables yet (found by a scan meanwhile)",
                                    value=values["unindexed"])
        if "lag_seconds" in values:
            yield GaugeMetricFamily("ingest_shipping_lag_seconds", "Age of the oldest event not "
                                    "shipped yet; 0 when none", value=values["lag_seconds"])


class RelayQuota(Collector):
    """The relay's quota from its usage endpoint, and the polls that failed, by reason.

    The gauges appear with the first good answer (a 0 before it would read as an exhausted
    quota) and keep the last good values through failures: the alert on a low quota must not
    resolve because the endpoint is down. The last success's time shows how old they are.
    """

    def __init__(self, reasons: Sequence[str]) -> None:
        self.remaining: float | None = None
        self.total: float | None = None
        self.last_success: float | None = None
        # Every reason at 0 from the start, so increase() sees the very first failure.
        self.failures = dict.fromkeys(reasons, 0)

    def succeeded(self, remaining: float, total: float, at: float) -> None:
        self.remaining, self.total, self.last_success = remaining, total, at

    def failed(self, reason: str) -> None:
        if reason in self.failures:  # the label set stays the one given
            self.failures[reason] += 1

    def collect(self) -> Iterator[Metric]:
        if self.last_success is not None:
            yield GaugeMetricFamily("holysheep_relay_quota_remaining", "Quota left on the "
                                    "relay account, from its usage endpoint (the last good "
                                    "answer)", value=self.remaining)
            # Not `_quota_total`: `_total` is for counters (promtool check metrics refuses it).
            yield GaugeMetricFamily("holysheep_relay_quota_limit", "Total quota of the relay "
                                    "account (the answer's total), from its usage endpoint "
                                    "(the last good answer)", value=self.total)
            yield GaugeMetricFamily("holysheep_relay_usage_last_success_timestamp_seconds",
                                    "Unix time of the last good answer of the relay's usage "
                                    "endpoint", value=self.last_success)
        failures = CounterMetricFamily(
            "holysheep_relay_usage_poll_failures", "Polls of the relay's usage endpoint that "
            "failed, by reason (the quota gauges keep their last good values)",
            labels=["reason"])
        for reason, count in self.failures.items():
            failures.add_metric([reason], count)
        yield failures
