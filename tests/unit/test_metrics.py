"""Relay traffic metrics from accepted events: exact counts, histogram buckets, bounded labels."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from ingest.metrics import LATENCY_BUCKETS, Metrics, RelayTraffic
from ingest.records import DeadLetter, Outcome, Pending, Row
from ingest.testing import row as make_row


def row(model: str | None = "gpt-4o", status: int | None = 200, latency: float | None = 120.0,
        prompt: int | None = 10, completion: int | None = 5, cost: float | None = 0.001,
        computed: float | None = 0.002) -> Row:
    return make_row("id", model=model, status_code=status, latency_ms=latency, prompt_tokens=prompt,
               completion_tokens=completion, cost_usd=cost, computed_cost_usd=computed,
               doc=b"{}")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_requests_tokens_and_cost_are_counted_once_per_new_event() -> None:
    metrics = Metrics(CollectorRegistry())
    rows = [row(), row(status=429), row(status=503), row(status=200), row(model="claude-x")]
    metrics.relay.observe(rows, [True, True, True, False, True])
    r = metrics.registry
    assert sample(r, "holysheep_relay_requests_total", model="gpt-4o", status_class="2xx") == 1
    assert sample(r, "holysheep_relay_requests_total", model="gpt-4o", status_class="429") == 1
    assert sample(r, "holysheep_relay_requests_total", model="gpt-4o", status_class="5xx") == 1
    assert sample(r, "holysheep_relay_requests_total", model="claude-x", status_class="2xx") == 1
    assert sample(r, "holysheep_relay_tokens_total", model="gpt-4o", kind="prompt") == 30
    assert sample(r, "holysheep_relay_tokens_total", model="gpt-4o", kind="completion") == 15
    assert sample(r, "holysheep_relay_cost_usd_total", model="gpt-4o", source="relay") == \
        pytest.approx(0.003)
    assert sample(r, "holysheep_relay_cost_usd_total", model="gpt-4o", source="computed") == \
        pytest.approx(0.006)


@pytest.mark.parametrize(("latency_ms", "first_bucket"), [
    (5, 0.01), (10, 0.01), (10.001, 0.025), (50, 0.05), (999, 1.0), (1000, 1.0), (10_000, 10.0),
    (10_001, float("inf")),
])
def test_latency_lands_in_the_right_cumulative_buckets(latency_ms: float,
                                                       first_bucket: float) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.relay.observe([row(latency=latency_ms)], [True])
    r = metrics.registry
    for bound in (*LATENCY_BUCKETS, float("inf")):
        le = "+Inf" if bound == float("inf") else repr(bound)
        expected = 1.0 if bound >= first_bucket else 0.0
        assert sample(r, "holysheep_relay_latency_seconds_bucket", model="gpt-4o", le=le) == \
            expected, le
    assert sample(r, "holysheep_relay_latency_seconds_count", model="gpt-4o") == 1
    assert sample(r, "holysheep_relay_latency_seconds_sum", model="gpt-4o") == \
        pytest.approx(latency_ms / 1000)


def test_missing_fields_are_not_invented() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.relay.observe([row(model=None, status=None, latency=None, prompt=None,
                               completion=None, cost=None, computed=None)], [True])
    r = metrics.registry
    assert sample(r, "holysheep_relay_requests_total", model="unknown",
                  status_class="unknown") == 1
    assert sample(r, "holysheep_relay_latency_seconds_count", model="unknown") is None
    assert sample(r, "holysheep_relay_tokens_total", model="unknown", kind="prompt") is None
    assert sample(r, "holysheep_relay_cost_usd_total", model="unknown", source="relay") is None


def test_model_labels_are_bounded() -> None:
    traffic = RelayTraffic(model_limit=3)
    assert [traffic.model(m) for m in ("a", "b", "c", "d", "a")] == ["a", "b", "c", "other", "a"]
    assert traffic.model("x" * 300) == "other"
    assert traffic.model("bad name with spaces") == "other"
    many = {traffic.model(f"m{i}") for i in range(10_000)}
    assert many == {"other"}


def test_refusals_count_by_outcome_and_reason() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.refused("unauthorized", "stale_timestamp")
    metrics.refused("unauthorized", "stale_timestamp")
    metrics.refused("too_large", "payload_too_large")
    r = metrics.registry
    assert sample(r, "ingest_webhooks_total", outcome="unauthorized",
                  reason="stale_timestamp") == 2
    assert sample(r, "ingest_webhooks_total", outcome="too_large",
                  reason="payload_too_large") == 1


def test_bulk_outcomes_and_sink_up() -> None:
    metrics = Metrics(CollectorRegistry())
    p = Pending(1, "a", b"{}", b"{}")
    metrics.bulk_done(Outcome(shipped=[p, p, p], conflicts=1, retry=[p],
                              dead=[DeadLetter(p, 400, "x", "y")]), 0.2)
    r = metrics.registry
    assert sample(r, "ingest_bulk_items_total", outcome="indexed") == 2
    assert sample(r, "ingest_bulk_items_total", outcome="conflict") == 1
    assert sample(r, "ingest_bulk_items_total", outcome="retried") == 1
    assert sample(r, "ingest_bulk_items_total", outcome="dead_lettered") == 1
    assert sample(r, "ingest_sink_up") == 1
    metrics.bulk_done(None, 1.0)
    assert sample(r, "ingest_sink_up") == 0
    assert sample(r, "ingest_bulk_failures_total") == 1
    assert sample(r, "ingest_bulk_duration_seconds_count") == 2


def test_store_gauges_are_read_at_scrape_time() -> None:
    metrics = Metrics(CollectorRegistry())
    values = {"pending": 3.0, "shipped": 10.0, "dead": 1.0}
    metrics.watch_store(lambda: values)
    r = metrics.registry
    assert sample(r, "ingest_store_events", state="pending") == 3
    assert sample(r, "ingest_shipping_lag_seconds") is None  # no sink, no lag
    values["lag_seconds"] = 42.0
    values["pending"] = 4.0
    assert sample(r, "ingest_store_events", state="pending") == 4
    assert sample(r, "ingest_shipping_lag_seconds") == 42
    assert sample(r, "ingest_store_unindexed_events") is None  # until the first count
    values["unindexed"] = 7.0
    assert sample(r, "ingest_store_unindexed_events") == 7


def test_relay_quota_appears_with_the_first_good_answer_and_keeps_its_label_set() -> None:
    metrics = Metrics(CollectorRegistry())
    r = metrics.registry
    assert sample(r, "holysheep_relay_usage_poll_failures_total", reason="timeout") is None
    quota = metrics.watch_relay_quota(["timeout", "unauthorized"])
    assert sample(r, "holysheep_relay_usage_poll_failures_total", reason="timeout") == 0
    assert sample(r, "holysheep_relay_usage_poll_failures_total", reason="unauthorized") == 0
    quota.failed("timeout")
    quota.failed("something-new")  # not in the set given: no new label value
    assert sample(r, "holysheep_relay_usage_poll_failures_total", reason="timeout") == 1
    assert sample(r, "holysheep_relay_usage_poll_failures_total", reason="something-new") is None
    text = metrics.render().decode()
    assert "holysheep_relay_quota" not in text  # nothing known: no gauge (a 0 would alarm)
    quota.succeeded(10.0, 200.0, 1_800_000_000.0)
    quota.failed("unauthorized")  # the last good values stay
    assert sample(r, "holysheep_relay_quota_remaining") == 10
    assert sample(r, "holysheep_relay_quota_limit") == 200
    assert sample(r, "holysheep_relay_usage_last_success_timestamp_seconds") == 1_800_000_000
    assert "# TYPE holysheep_relay_quota_remaining gauge" in metrics.render().decode()
