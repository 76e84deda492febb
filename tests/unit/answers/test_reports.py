"""The three report questions over a fixed set of events, with hand-computed answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.answers import catalogue, reports
from ingest.answers import elasticsearch as es_answers
from ingest.errors import ConfigError
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook, Rate
from ingest.records import Query
from ingest.store import Background, Reader, Store

DAY1 = 1_790_000_000_000 - 1_790_000_000_000 % 86_400_000  # a UTC midnight
HOUR = 3_600_000
PRICES = PriceBook({"m-a": Rate(1.0, 2.0, "override")}, lookup=None)


def ev(n: int, ts: int, model: str | None, status: int, latency: float | None,
       user: str = "u1", prompt: int | None = 1000, completion: int | None = 500,
       cost: float | None = 0.01, error: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"id": f"e{n}", "status_code": status, "timestamp": ts,
                             "user_metadata": {"user_id": user}}
    if model is not None:
        event["model"] = model
    if latency is not None:
        event["latency_ms"] = latency
    if prompt is not None or completion is not None:
        event["usage"] = {k: v for k, v in (("prompt_tokens", prompt),
                                            ("completion_tokens", completion)) if v is not None}
    if cost is not None:
        event["cost_usd"] = cost
    if error is not None:
        event["error"] = {"message": error}
    return event


EVENTS = [
    # day 1, model m-a: latencies 10, 20, 30, 40 (ms); one 500
    ev(1, DAY1 + 1 * HOUR, "m-a", 200, 10),
    ev(2, DAY1 + 2 * HOUR, "m-a", 200, 20),
    ev(3, DAY1 + 3 * HOUR, "m-a", 200, 30, user="u2"),
    ev(4, DAY1 + 4 * HOUR, "m-a", 500, 40, error="upstream down"),
    # day 1, unknown model m-b: 429s and a missing usage
    ev(5, DAY1 + 5 * HOUR, "m-b", 429, 100, error="rate limited", prompt=None, completion=None,
       cost=None),
    ev(6, DAY1 + 6 * HOUR, "m-b", 429, 300, error="rate limited"),
    # day 2, model m-a: no latency reported
    ev(7, DAY1 + 26 * HOUR, "m-a", 200, None, prompt=2000, completion=0, cost=0.002),
]


@pytest.fixture(scope="module", params=["tail", "indexed", "split"])
def reader(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """The same events all in the unindexed tail, all indexed, or some of each."""
    data: Path = tmp_path_factory.mktemp("reports")
    enricher = Enricher.default(PRICES)
    rows = [enricher.row(dict(e), orjson.dumps(e), e["timestamp"]) for e in EVENTS]
    first = {"tail": 0, "indexed": len(rows), "split": len(rows) // 2}[request.param]

    async def fill() -> None:
        store = Store(data, background=Background(index_batch=10**9, index_delay_s=10**9))
        store.start()
        await store.write(rows[:first])
        store.catch_up()
        await store.write(rows[first:])
        store.close()

    asyncio.run(fill())
    reader = Reader(data)
    yield reader
    reader.close()


ALL = Query(DAY1, DAY1 + 48 * HOUR)


def test_exact_percentiles_and_buckets(reader: Reader) -> None:
    result = reports.latency_result(ALL, reader.latencies(ALL), "exact")
    by_model = {row["model"]: row for row in result["by_model"]}
    # m-a: 10, 20, 30, 40 -> p50 = 25, p90 = 37, p95 = 38.5, p99 = 39.7 (linear between ranks)
    assert by_model["m-a"] == {"model": "m-a", "count": 4, "p50": 25.0, "p90": 37.0,
                               "p95": 38.5, "p99": 39.7}
    assert by_model["m-b"]["count"] == 2 and by_model["m-b"]["p50"] == 200.0
    # all: 10 20 30 40 100 300 -> p50 = 35, p99 = 300 - 0.05 * 200 = 290
    assert result["overall"]["count"] == 6
    assert result["overall"]["p50"] == 35.0
    assert result["overall"]["p99"] == pytest.approx(290.0)
    assert result["buckets"] == {"ultra-fast": 4, "fast": 0, "normal": 1, "slow": 1}


def test_errors_by_model(reader: Reader) -> None:
    q = Query(DAY1, DAY1 + 24 * HOUR)
    result = reports.errors_result(q, reader.error_counts(q), reader.top_errors(q, 3))
    rows = {row["model"]: row for row in result["by_model"]}
    assert rows["m-b"] == {"model": "m-b", "requests": 2, "errors": 2, "error_rate": 1.0,
                           "top_errors": [{"message": "rate limited", "count": 2}]}
    assert rows["m-a"]["requests"] == 4 and rows["m-a"]["errors"] == 1
    assert rows["m-a"]["error_rate"] == 0.25
    assert result["total"] == {"requests": 6, "errors": 3, "error_rate": 0.5}
    assert [row["model"] for row in result["by_model"]] == ["m-b", "m-a"]  # most errors first


def test_cost_per_day_and_per_model(reader: Reader) -> None:
    result = reports.cost_result(ALL, "day", reader.cost(ALL, "day"))
    day1, day2 = result["rows"]
    assert day1["day"] == datetime.fromtimestamp(DAY1 / 1000, UTC).strftime("%Y-%m-%d")
    assert day1["requests"] == 6
    assert day1["cost_usd"] == pytest.approx(0.05)  # event 5 reported no cost
    # computed only for m-a (4 events x (1000 x $1 + 500 x $2) / 1M = 4 x 0.002)
    assert day1["computed_cost_usd"] == pytest.approx(0.008)
    assert day1["prompt_tokens"] == 5000 and day1["completion_tokens"] == 2500
    assert day1["total_tokens"] == 7500
    assert day2["requests"] == 1 and day2["computed_cost_usd"] == pytest.approx(0.002)
    assert result["total"]["requests"] == 7
    per_model = reports.cost_result(ALL, "model", reader.cost(ALL, "model"))
    assert [(r["day"][-2:], r["model"], r["requests"]) for r in per_model["rows"]] == [
        (day1["day"][-2:], "m-a", 4), (day1["day"][-2:], "m-b", 2), (day2["day"][-2:], "m-a", 1)]
    per_user = reports.cost_result(ALL, "user", reader.cost(ALL, "user"))
    assert {(r["user"], r["requests"]) for r in per_user["rows"]} == {
        ("u1", 5), ("u2", 1), ("u1", 1)}


def test_filters_and_windows(reader: Reader) -> None:
    only_b = Query(DAY1, DAY1 + 48 * HOUR, model="m-b")
    assert reports.latency_result(only_b, reader.latencies(only_b), "exact")["overall"][
        "count"] == 2
    u2 = Query(DAY1, DAY1 + 48 * HOUR, user="u2")
    assert reader.error_counts(u2) == [("m-a", 1, 0)]
    # The window excludes its end: an event exactly at `until` is not in it.
    edge = Query(DAY1, DAY1 + 1 * HOUR)
    assert reader.error_counts(edge) == []


def test_an_empty_window_is_empty_not_zeros(reader: Reader) -> None:
    q = Query(DAY1 - 10 * HOUR, DAY1 - 9 * HOUR)
    latency = reports.latency_result(q, reader.latencies(q), "exact")
    assert reports.empty(latency) and latency["overall"]["p50"] is None
    assert reports.empty(reports.errors_result(q, reader.error_counts(q), {}))
    assert reports.empty(reports.cost_result(q, "day", reader.cost(q, "day")))
    unknown = Query(DAY1, DAY1 + 48 * HOUR, model="no-such-model")
    assert reports.empty(reports.errors_result(unknown, reader.error_counts(unknown), {}))


def test_json_keys_are_stable(reader: Reader) -> None:
    latency = reports.latency_result(ALL, reader.latencies(ALL), "exact")
    assert list(latency) == ["question", "window", "method", "overall", "by_model", "buckets"]
    assert list(latency["overall"]) == ["count", "p50", "p90", "p95", "p99"]
    assert list(latency["by_model"][0]) == ["model", "count", "p50", "p90", "p95", "p99"]
    errors = reports.errors_result(ALL, reader.error_counts(ALL), reader.top_errors(ALL, 3))
    assert list(errors) == ["question", "window", "by_model", "total"]
    assert list(errors["by_model"][0]) == ["model", "requests", "errors", "error_rate",
                                           "top_errors"]
    cost = reports.cost_result(ALL, "model", reader.cost(ALL, "model"))
    assert list(cost) == ["question", "window", "by", "rows", "total"]
    assert list(cost["rows"][0]) == ["day", "model", "requests", "cost_usd",
                                     "computed_cost_usd", "prompt_tokens", "completion_tokens",
                                     "total_tokens"]


def test_time_arguments() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert reports.parse_time("24h", now) == int(now.timestamp() * 1000) - 86_400_000
    assert reports.parse_time("2026-11-01T00:00:00Z", now) == int(
        datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
    q = reports.query("errors", None, None, None, None, now)
    assert q.until_ms - q.since_ms == HOUR
    with pytest.raises(ConfigError):
        reports.parse_time("yesterday", now)
    with pytest.raises(ConfigError):
        reports.query("cost", "1h", "2h", None, None, now)


def test_the_elasticsearch_side_answers_in_the_same_shape() -> None:
    q = Query(DAY1, DAY1 + 48 * HOUR, model="m-a", user="u1")
    body = es_answers.es_body("latency", q)
    assert {"term": {"model": "m-a"}} in body["query"]["bool"]["filter"]
    assert {"term": {"user_metadata.user_id": "u1"}} in body["query"]["bool"]["filter"]
    response = {"aggregations": {
        "overall": {"values": {"50.0": 25.0, "90.0": 37.0, "95.0": 38.5, "99.0": 39.7}},
        "by_model": {"buckets": [{"key": "m-a", "doc_count": 4, "latency": {"values": {
            "50.0": 25.0, "90.0": 37.0, "95.0": 38.5, "99.0": 39.7}}}]},
        "buckets": {"buckets": [{"key": "ultra-fast", "doc_count": 4}]}}}
    result = es_answers.from_es("latency", q, response)
    assert result["by_model"][0] == {"model": "m-a", "count": 4, "p50": 25.0, "p90": 37.0,
                                     "p95": 38.5, "p99": 39.7}
    assert result["buckets"] == {"ultra-fast": 4, "fast": 0, "normal": 0, "slow": 0}
    cost_body = es_answers.es_body("cost", q, "model")
    assert cost_body["aggs"]["days"]["aggs"]["split"]["terms"]["field"] == "model"
    cost = es_answers.from_es("cost", q, {"aggregations": {"days": {"buckets": [{
        "key": DAY1, "key_as_string": "2026-09-21T00:00:00.000Z", "doc_count": 4,
        "split": {"buckets": [{
            "key": "m-a", "doc_count": 4, "cost_usd": {"value": 0.04},
            "computed_cost_usd": {"value": 0.008}, "prompt_tokens": {"value": 4000.0},
            "completion_tokens": {"value": 2000.0}, "total_tokens": {"value": 6000.0}}]}}]}}},
        "model")
    assert type(cost["rows"][0]["prompt_tokens"]) is int
    assert cost["rows"] == [{"day": "2026-09-21", "model": "m-a", "requests": 4,
                             "cost_usd": 0.04, "computed_cost_usd": 0.008,
                             "prompt_tokens": 4000, "completion_tokens": 2000,
                             "total_tokens": 6000}]


def test_search_body_filters_and_orders() -> None:
    body = es_answers.search_body("e1", "u1", "t1", "rate limit", 5)
    assert body["size"] == 5 and body["sort"] == [{"@timestamp": "desc"}]
    assert body["query"]["bool"]["filter"] == [
        {"term": {"id": "e1"}}, {"term": {"user_metadata.user_id": "u1"}},
        {"term": {"user_metadata.trace_id": "t1"}}]
    assert body["query"]["bool"]["must"] == [{"match_phrase": {"error.message": "rate limit"}}]
    assert es_answers.search_body(None, None, None, None, 20)["query"]["bool"] == {
        "filter": [], "must": []}


# -- Elasticsearch: each event id counted once, even in two backing indices ----------------------

QUESTIONS = [("latency", "day"), ("errors", "day"), ("cost", "day"), ("cost", "model"),
             ("cost", "user")]
NESTED = {"top", "split"}  # many small buckets: the default threshold, 16 KiB each


def distinct_ids(threshold: int) -> dict[str, Any]:
    return {"cardinality": {"field": "id", "precision_threshold": threshold}}


def bucket_aggs(aggs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every bucket aggregation (terms, date_histogram, filter) in a body, with its name."""
    found = []
    for name, agg in aggs.items():
        if {"terms", "date_histogram", "filter"} & set(agg):
            found.append((name, agg))
        found += bucket_aggs(agg.get("aggs", {}))
    return found


@pytest.mark.parametrize(("question", "by"), QUESTIONS)
def test_every_count_in_the_elasticsearch_bodies_is_of_distinct_ids(question: str,
                                                                    by: str) -> None:
    body = es_answers.es_body(question, Query(DAY1, DAY1 + HOUR), by)
    buckets = bucket_aggs(body["aggs"])
    assert buckets
    for name, agg in buckets:
        assert agg["aggs"]["ids"] == distinct_ids(3000 if name in NESTED else 40000), name


@pytest.mark.parametrize(("question", "by"), QUESTIONS)
def test_the_bodies_are_the_query_files_with_the_window_and_filters(question: str,
                                                                    by: str) -> None:
    from ingest.admin.elasticsearch import asset_dir

    shipped = orjson.loads((asset_dir() / "queries" / f"{question}.json").read_bytes())
    q = Query(DAY1, DAY1 + HOUR, model="m-a", user="u1")
    body = es_answers.es_body(question, q, by)
    filters = body["query"]["bool"]["filter"]
    assert filters[0] == {"range": {"@timestamp": {"gte": DAY1, "lt": DAY1 + HOUR,
                                                   "format": "epoch_millis"}}}
    # The file's own filters (other than its example window) are kept.
    kept = [f for f in shipped["query"]["bool"]["filter"] if "@timestamp" not in
            f.get("range", {})]
    assert filters[1:] == [*kept, {"term": {"model": "m-a"}},
                           {"term": {"user_metadata.user_id": "u1"}}]
    if by == "day":
        assert body["aggs"] == shipped["aggs"]
    else:
        split = body["aggs"]["days"]["aggs"]["split"]
        assert split["aggs"] == {**shipped["aggs"]["days"]["aggs"], "ids": distinct_ids(3000)}


def test_the_latency_body_counts_only_events_with_a_latency() -> None:
    body = es_answers.es_body("latency", ALL)
    assert {"exists": {"field": "latency_ms"}} in body["query"]["bool"]["filter"]


# One event (`dup`, model m-a, 120 ms, an error) indexed twice, in two backing indices, beside
# one other event of m-a (40 ms): Elasticsearch counts 3 documents but 2 distinct ids.
TWO_COPIES = {
    "latency": {"aggregations": {
        "overall": {"values": {"50.0": 120.0, "90.0": 120.0, "95.0": 120.0, "99.0": 120.0}},
        "by_model": {"buckets": [{"key": "m-a", "doc_count": 3, "ids": {"value": 2},
                                  "latency": {"values": {"50.0": 120.0, "90.0": 120.0,
                                                         "95.0": 120.0, "99.0": 120.0}}}]},
        "buckets": {"buckets": [{"key": "normal", "doc_count": 2, "ids": {"value": 1}},
                                {"key": "ultra-fast", "doc_count": 1, "ids": {"value": 1}}]}}},
    "errors": {"aggregations": {"by_model": {"buckets": [{
        "key": "m-a", "doc_count": 3, "ids": {"value": 2},
        "errors": {"doc_count": 2, "ids": {"value": 1}, "top": {"buckets": [
            {"key": "upstream down", "doc_count": 2, "ids": {"value": 1}}]}}}]}}},
    "cost": {"aggregations": {"days": {"buckets": [{
        "key": DAY1, "key_as_string": "2026-09-21T00:00:00.000Z", "doc_count": 3,
        "ids": {"value": 2}, "cost_usd": {"value": 0.03}, "computed_cost_usd": {"value": 0.0},
        "prompt_tokens": {"value": 30.0}, "completion_tokens": {"value": 15.0},
        "total_tokens": {"value": 45.0}}]}}},
}


def test_two_copies_of_one_id_count_once_in_every_report() -> None:
    latency = es_answers.from_es("latency", ALL, TWO_COPIES["latency"])
    assert latency["overall"]["count"] == 2
    assert latency["by_model"][0]["count"] == 2
    assert latency["buckets"] == {"ultra-fast": 1, "fast": 0, "normal": 1, "slow": 0}
    errors = es_answers.from_es("errors", ALL, TWO_COPIES["errors"])
    assert errors["by_model"][0] == {"model": "m-a", "requests": 2, "errors": 1,
                                     "error_rate": 0.5, "top_errors": [
                                         {"message": "upstream down", "count": 1}]}
    assert errors["total"] == {"requests": 2, "errors": 1, "error_rate": 0.5}
    cost = es_answers.from_es("cost", ALL, TWO_COPIES["cost"])
    assert cost["rows"][0]["requests"] == 2
    # Sums are over documents: the second copy's cost and tokens are in them (README).
    assert cost["rows"][0]["total_tokens"] == 45


def requests_per_day(documents: int, distinct: int, by: str = "day") -> int:
    day = {"key": DAY1, "doc_count": documents, "ids": {"value": distinct},
           **{k: {"value": 0.0} for k in reports.COST_KEYS if k != "requests"}}
    if by != "day":
        day = {"key": DAY1, "doc_count": documents, "split": {"buckets": [{**day, "key": "m"}]}}
    rows = es_answers.from_es("cost", ALL, {"aggregations": {"days": {"buckets": [day]}}}, by)
    return int(rows["rows"][0]["requests"])


@pytest.mark.parametrize(("documents", "distinct", "by", "expected"), [
    (40_000, 39_990, "day", 39_990),   # up to the threshold distinct ids are exact
    (3_000, 2_999, "model", 2_999),
    (50_000, 50_131, "day", 50_000),   # an estimate above the documents: never more
    (50_000, 49_700, "day", 50_000),   # within the estimate's error: the documents
    (50_000, 40_100, "day", 40_100),   # far below: many copies, the estimate
    (5_000, 4_990, "model", 5_000),    # above the nested threshold of 3,000
    (5_000, 4_000, "model", 4_000),
])
def test_counts_above_the_precision_threshold(documents: int, distinct: int, by: str,
                                              expected: int) -> None:
    assert requests_per_day(documents, distinct, by) == expected


def test_search_collapses_on_the_event_id_and_keeps_each_id_once() -> None:
    body = es_answers.search_body(None, "u1", None, None, 10)
    assert body["collapse"] == {"field": "id"}
    assert body["sort"] == [{"@timestamp": "desc"}]
    copy_a = {"_index": ".ds-logs-holysheep.requests-default-2026.09.21-000001", "_id": "dup",
              "_source": {"id": "dup", "model": "m-a"}}
    copy_b = {**copy_a, "_index": ".ds-logs-holysheep.requests-default-2026.09.22-000002"}
    other = {"_index": copy_a["_index"], "_id": "e2", "_source": {"id": "e2"}}
    response = {"hits": {"total": {"value": 3}, "hits": [copy_b, other, copy_a]}}
    assert es_answers.search_hits(response) == [{"id": "dup", "model": "m-a"}, {"id": "e2"}]
    assert es_answers.search_hits({}) == []


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [doc["id"] for doc in docs]


def test_search_by_model_status_class_and_window(reader: Reader) -> None:
    now = datetime.fromtimestamp(DAY1 / 1000 + 3 * 86400, UTC)

    def found(**filters: Any) -> list[str]:
        return ids(catalogue.search(reader, catalogue.search_query(now=now, **{"limit": 50,
                                                                          **filters})))

    assert found(model="m-b") == ["e6", "e5"]
    # 429 is a class of its own, as in the enrichment and the metrics: not in 4xx.
    assert found(status="429") == ["e6", "e5"]
    assert found(status="4xx") == []
    assert found(status="5xx") == ["e4"]
    assert found(status="2xx", model="m-a") == ["e7", "e3", "e2", "e1"]
    # The window: since included, until excluded, in event time (not receive time).
    since = datetime.fromtimestamp((DAY1 + 2 * HOUR) / 1000, UTC).isoformat()
    until = datetime.fromtimestamp((DAY1 + 4 * HOUR) / 1000, UTC).isoformat()
    assert found(since=since, until=until) == ["e3", "e2"]
    assert found(since="48h") == ["e7"]  # relative to `now`: DAY1 + 24h and after
    assert found(user="u2", status="2xx", since=since) == ["e3"]
    assert found(user="u1", model="m-b", status="429") == ["e6", "e5"]
    assert found(text="rate", since=since) == ["e6", "e5"]
    assert found(text="rate", status="5xx") == []
    assert found(event_id="e4", status="5xx") == ["e4"]
    assert found(event_id="e4", status="2xx") == []
    assert found(model="m-a", limit=2) == ["e7", "e4"]


@pytest.mark.parametrize("bad", ["4", "6xx", "40x", "error", "xx", "428"])
def test_status_class_must_be_a_class(bad: str) -> None:
    with pytest.raises(ConfigError, match="1xx to 5xx"):
        catalogue.status_class(bad)


def test_search_window_must_be_ordered() -> None:
    now = datetime.fromtimestamp(DAY1 / 1000, UTC)
    with pytest.raises(ConfigError, match="before"):
        catalogue.search_query(since="1h", until="2h", now=now)
    with pytest.raises(ConfigError, match="ISO 8601"):
        catalogue.search_query(since="yesterday", now=now)


def test_one_entry_point_answers_every_question(reader: Reader) -> None:
    assert catalogue.answer("latency", ALL, "day", reader) == reports.latency_result(
        ALL, reader.latencies(ALL), "exact")
    assert catalogue.answer("errors", ALL, "day", reader) == reports.errors_result(
        ALL, reader.error_counts(ALL), reader.top_errors(ALL, reports.TOP_ERRORS))
    for by in catalogue.COST_BY:
        assert catalogue.answer("cost", ALL, by, reader) == reports.cost_result(
            ALL, by, reader.cost(ALL, by))
    with pytest.raises(ConfigError):
        catalogue.answer("cost", ALL, "week", reader)
    with pytest.raises(ConfigError):
        catalogue.answer("uptime", ALL, "day", reader)


def test_search_body_carries_the_new_filters() -> None:
    body = catalogue.Search(model="m-a", status="4xx", since_ms=1, until_ms=2).body()
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"model": "m-a"}} in filters
    assert {"term": {"status_class": "4xx"}} in filters
    assert {"range": {"@timestamp": {"gte": 1, "lt": 2, "format": "epoch_millis"}}} in filters


def test_time_series_per_slot_and_model(reader: Reader) -> None:
    from ingest.ui import series

    q = Query(DAY1, DAY1 + 24 * HOUR)
    assert series.step_for(q) == 15 * 60_000  # the finest keeping a day within 200 slots
    flow = series.traffic(q, HOUR, reader)
    assert len(flow["slots"]) == 24 and flow["slots"][1].startswith(
        datetime.fromtimestamp((DAY1 + HOUR) / 1000, UTC).strftime("%Y-%m-%dT%H"))
    by_model = {m["model"]: m for m in flow["by_model"]}
    assert by_model["m-a"]["requests"][1:5] == [1, 1, 1, 1]
    assert by_model["m-a"]["errors"][4] == 1 and by_model["m-a"]["error_rate"][4] == 1.0
    assert by_model["m-b"]["requests"][5:7] == [1, 1] and by_model["m-b"]["errors"][5:7] == [1, 1]
    assert flow["total"]["requests"][0] == 0 and flow["total"]["error_rate"][0] is None
    assert sum(flow["total"]["requests"]) == 6
    latency = series.latency(Query(DAY1, DAY1 + 48 * HOUR), 24 * HOUR, reader)
    # day 1: 10 20 30 40 100 300 (the overall report's numbers); day 2: no latency at all
    assert latency["count"] == [6, 0]
    assert latency["p50"] == [35.0, None] and latency["p99"][0] == pytest.approx(290.0)


def test_top_users_by_cost(reader: Reader) -> None:
    from ingest.ui import series

    top = series.top_users(ALL, 10, reader)
    assert [(u["user"], u["requests"], u["errors"]) for u in top["users"]] == [
        ("u1", 6, 3), ("u2", 1, 0)]
    assert top["users"][0]["cost_usd"] == pytest.approx(0.042)  # 0.01 x 4 + 0.002
    assert top["total_users"] == 2
    assert [u["user"] for u in series.top_users(ALL, 1, reader)["users"]] == ["u1"]


def test_steps_fit_the_window() -> None:
    from ingest.ui import series

    minute = 60_000
    assert series.step_for(Query(0, HOUR)) == minute
    assert series.step_for(Query(0, 7 * 24 * HOUR)) == HOUR
    assert series.step_for(Query(0, 30 * 24 * HOUR)) == 6 * HOUR
    assert series.step_for(Query(0, HOUR), "5m") == 5 * minute
    with pytest.raises(ConfigError):
        series.step_for(Query(0, 30 * 24 * HOUR), "1m")
