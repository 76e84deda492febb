"""The question catalogue: latency, errors, cost; one result shape, two backends (store, ES)."""

from __future__ import annotations

import copy
import json
import math
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any

from ingest.enrich import LatencyBucket
from ingest.errors import ConfigError
from ingest.records import Query, iso_ms

if TYPE_CHECKING:
    from ingest.store import Reader

PERCENTS = (50, 90, 95, 99)
BUCKETS = (*(name for _, name in LatencyBucket().bounds), LatencyBucket().last)
TOP_ERRORS = 3
DEFAULT_SINCE = {"latency": "24h", "errors": "1h", "cost": "7d"}
_RELATIVE = re.compile(r"(\d+)\s*(m|h|d|w)", re.IGNORECASE)
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, now: datetime) -> int:
    """`24h`, `7d`, `30m` (that long before now) or an ISO 8601 time -> unix ms."""
    match = _RELATIVE.fullmatch(value.strip())
    if match:
        delta = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2).lower()])
        return int((now - delta).timestamp() * 1000)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{value!r}: use a relative time (30m, 24h, 7d) or ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def query(question: str, since: str | None, until: str | None, model: str | None,
          user: str | None, now: datetime) -> Query:
    start = parse_time(since or DEFAULT_SINCE[question], now)
    end = parse_time(until, now) if until else int(now.timestamp() * 1000)
    if start >= end:
        raise ConfigError("--since must be before --until")
    return Query(start, end, model, user)


def percentile(ordered: Sequence[float], percent: float) -> float | None:
    """Exact percentile with linear interpolation between ranks (numpy's default)."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * percent / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


_BOUNDS = tuple(bound for bound, _ in LatencyBucket().bounds)


def bucket_counts(ordered: Sequence[float]) -> dict[str, int]:
    """How many of the sorted latencies fall in each bucket (the enrichment's boundaries)."""
    edges = [0, *(bisect_left(ordered, bound) for bound in _BOUNDS), len(ordered)]
    return {name: high - low for name, low, high in zip(BUCKETS, edges[:-1], edges[1:],
                                                        strict=True)}


# Results: the same stable keys from both backends ---------------------------------------------
def latency_result(q: Query, by_model: dict[str, list[float]], method: str) -> dict[str, Any]:
    """From each model's sorted latencies (ms)."""
    everything = sorted(chain.from_iterable(by_model.values()))  # merges sorted runs
    counts = bucket_counts(everything)
    return {
        "question": "latency", "window": q.window(), "method": method,
        "overall": _stats(everything),
        "by_model": [{"model": model, **_stats(values)}
                     for model, values in sorted(by_model.items(), key=lambda kv: -len(kv[1]))],
        "buckets": counts,
    }


def _stats(ordered: Sequence[float]) -> dict[str, Any]:
    return {"count": len(ordered),
            **{f"p{p}": _round(percentile(ordered, p)) for p in PERCENTS}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def errors_result(q: Query, rows: Sequence[tuple[str | None, int, int]],
                  top: dict[str | None, list[tuple[str, int]]]) -> dict[str, Any]:
    """From (model, requests, errors) rows and each model's top error messages."""
    by_model = []
    for model, requests, errors in sorted(rows, key=lambda r: (-r[2], -r[1], str(r[0]))):
        by_model.append({
            "model": model, "requests": requests, "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "top_errors": [{"message": m, "count": c} for m, c in top.get(model, [])][:TOP_ERRORS],
        })
    requests = sum(r[1] for r in rows)
    errors = sum(r[2] for r in rows)
    return {"question": "errors", "window": q.window(), "by_model": by_model,
            "total": {"requests": requests, "errors": errors,
                      "error_rate": round(errors / requests, 4) if requests else 0.0}}


COST_KEYS = ("requests", "cost_usd", "computed_cost_usd", "prompt_tokens", "completion_tokens",
             "total_tokens")


def cost_result(q: Query, by: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """From rows with `day`, optional `key`, and the COST_KEYS sums."""
    out = []
    for row in rows:
        item: dict[str, Any] = {"day": row["day"]}
        if by != "day":
            item[by] = row.get("key")
        for key in COST_KEYS:
            value = row.get(key) or 0
            item[key] = round(float(value), 6) if key.endswith("usd") else int(value)
        out.append(item)
    totals = {key: round(sum(r[key] for r in out), 6) if key.endswith("usd")
              else sum(r[key] for r in out) for key in COST_KEYS}
    return {"question": "cost", "window": q.window(), "by": by, "rows": out, "total": totals}


def empty(result: dict[str, Any]) -> bool:
    question = result["question"]
    if question == "latency":
        return bool(result["overall"]["count"] == 0)
    if question == "errors":
        return bool(result["total"]["requests"] == 0)
    return not result["rows"]


# The Elasticsearch side: the files under elasticsearch/queries with the filters applied ------
# Counts are of distinct event ids (`ids`, a cardinality on `id`): exact up to the threshold.
# Memory is about 2**18 bytes per bucket at 40,000 and 2**14 at 3,000 (HyperLogLogPlusPlus.
# precisionFromThreshold), so the many small buckets (day x model or user, top messages) get
# the default 3,000.
EXACT_IDS = 40_000
EXACT_IDS_NESTED = 3_000
ESTIMATE_MARGIN = 0.03
def es_body(question: str, q: Query, by: str = "day") -> dict[str, Any]:
    """The Dev Tools body of `question` with this window and filters."""
    from ingest.sink import asset_dir

    path = asset_dir() / "queries" / f"{question}.json"
    try:
        body: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read query {path}: {exc}") from exc
    body = copy.deepcopy(body)
    # The file's example window gives way to this one; its other filters stay.
    filters: list[dict[str, Any]] = [{"range": {"@timestamp": {
        "gte": q.since_ms, "lt": q.until_ms, "format": "epoch_millis"}}}]
    filters += [f for f in body["query"]["bool"]["filter"]
                if "@timestamp" not in f.get("range", {})]
    if q.model:
        filters.append({"term": {"model": q.model}})
    if q.user:
        filters.append({"term": {"user_metadata.user_id": q.user}})
    body["query"] = {"bool": {"filter": filters}}
    if question == "cost" and by != "day":
        field = "model" if by == "model" else "user_metadata.user_id"
        days = body["aggs"]["days"]
        # Not "key": that name is taken by the day bucket's own key in the answer.
        nested = {"cardinality": {"field": "id", "precision_threshold": EXACT_IDS_NESTED}}
        days["aggs"] = {"ids": days["aggs"]["ids"],
                        "split": {"terms": {"field": field, "size": 100},
                                  "aggs": {**days["aggs"], "ids": nested}}}
    return body


def _count(bucket: dict[str, Any], exact_up_to: int = EXACT_IDS) -> int:
    """A bucket's events, each id once (a copy re-sent after a rollover is a second document,
    in another backing index): its distinct ids, never more than its documents.

    Elasticsearch counts distinct ids exactly up to the aggregation's `precision_threshold`
    (`exact_up_to`) and estimates them above it (HyperLogLog++). An estimate within
    ESTIMATE_MARGIN of the documents cannot tell a few copies from its own error, so the
    documents are the better count then; only many copies move it further down.
    """
    documents = int(bucket["doc_count"])
    found = (bucket.get("ids") or {}).get("value")
    if found is None:
        return documents
    distinct = int(found)
    if distinct <= exact_up_to or distinct < documents * (1 - ESTIMATE_MARGIN):
        return min(documents, distinct)
    return documents


def from_es(question: str, q: Query, response: dict[str, Any], by: str = "day") -> dict[str, Any]:
    """An Elasticsearch answer to `es_body` in the common result shape."""
    aggs = response.get("aggregations") or {}
    if question == "latency":
        return _latency_from_es(q, aggs)
    if question == "errors":
        rows, top = [], {}
        for b in aggs.get("by_model", {}).get("buckets", []):
            rows.append((b["key"], _count(b), _count(b["errors"])))
            top[b["key"]] = [(t["key"], _count(t, EXACT_IDS_NESTED))
                             for t in b["errors"].get("top", {}).get("buckets", [])]
        return errors_result(q, rows, top)
    out = []
    for day in aggs.get("days", {}).get("buckets", []):
        stamp = day["key_as_string"][:10] if "key_as_string" in day else iso_ms(day["key"])[:10]
        groups = day["split"]["buckets"] if by != "day" else [day]
        for g in groups:
            row = {"day": stamp, "requests": _count(g, EXACT_IDS_NESTED if by != "day"
                                                    else EXACT_IDS),
                   **{k: g[k]["value"] for k in COST_KEYS if k != "requests"}}
            if by != "day":
                row["key"] = g["key"]
            out.append(row)
    return cost_result(q, by, out)


def _latency_from_es(q: Query, aggs: dict[str, Any]) -> dict[str, Any]:
    def stats(count: int, values: dict[str, Any]) -> dict[str, Any]:
        return {"count": count, **{f"p{p}": _round(values.get(f"{float(p)}")) for p in PERCENTS}}

    models = aggs.get("by_model", {}).get("buckets", [])
    counts = dict.fromkeys(BUCKETS, 0)
    for b in aggs.get("buckets", {}).get("buckets", []):
        counts[b["key"]] = _count(b)
    total = sum(counts.values())
    return {
        "question": "latency", "window": q.window(), "method": "approximate (t-digest)",
        "overall": stats(total, aggs.get("overall", {}).get("values", {})),
        "by_model": [stats(_count(b), b["latency"]["values"]) | {"model": b["key"]}
                     for b in models],
        "buckets": counts,
    }


def search_body(event_id: str | None, user: str | None, trace: str | None, text: str | None,
                limit: int, *, model: str | None = None, status: tuple[int, int] | None = None,
                since_ms: int | None = None, until_ms: int | None = None) -> dict[str, Any]:
    """The Elasticsearch side of `search`: every filter given must match, newest first."""
    filters: list[dict[str, Any]] = []
    for field, value in (("id", event_id), ("user_metadata.user_id", user),
                         ("user_metadata.trace_id", trace), ("model", model)):
        if value is not None:
            filters.append({"term": {field: value}})
    if status is not None:
        filters.append({"range": {"status_code": {"gte": status[0], "lt": status[1]}}})
    if since_ms is not None or until_ms is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if since_ms is not None:
            bounds["gte"] = since_ms
        if until_ms is not None:
            bounds["lt"] = until_ms
        filters.append({"range": {"@timestamp": bounds}})
    must = [{"match_phrase": {"error.message": text}}] if text else []
    # One hit per event id: a copy re-sent after a rollover sits in another backing index.
    return {"size": limit, "sort": [{"@timestamp": "desc"}], "collapse": {"field": "id"},
            "query": {"bool": {"filter": filters, "must": must}}}


def search_hits(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents of a `search_body` answer, newest first, each event id once."""
    seen: set[Any] = set()
    found = []
    for hit in response.get("hits", {}).get("hits", []):
        source = hit.get("_source") or {}
        key = source.get("id", hit.get("_id"))
        if key not in seen:
            seen.add(key)
            found.append(source)
    return found


# One entry point per question for every caller (CLI, dashboard API) ---------------------------
def answer(question: str, q: Query, by: str, reader: Reader) -> dict[str, Any]:
    """`question` answered from the embedded store: what `report --json` prints."""
    if question == "latency":
        return latency_result(q, reader.latencies(q), "exact")
    if question == "errors":
        return errors_result(q, reader.error_counts(q), reader.top_errors(q, TOP_ERRORS))
    if question == "cost":
        if by not in COST_BY:
            raise ConfigError(f"by: {by!r} is not one of {', '.join(COST_BY)}")
        return cost_result(q, by, reader.cost(q, by))
    raise ConfigError(f"{question!r} is not a question: ask {', '.join(DEFAULT_SINCE)}")


COST_BY = ("day", "model", "user")
_STATUS_CLASS = re.compile(r"([1-5])xx", re.IGNORECASE)


def status_range(value: str | None) -> tuple[int, int] | None:
    """`4xx` -> (400, 500): the status codes of a class, the end excluded."""
    if value is None:
        return None
    match = _STATUS_CLASS.fullmatch(value.strip())
    if not match:
        raise ConfigError(f"status {value!r}: use a class, 1xx to 5xx")
    low = int(match.group(1)) * 100
    return low, low + 100


@dataclass(frozen=True)
class Search:
    """The filters of `search`; None means not given (no window at all by default)."""

    event_id: str | None = None
    user: str | None = None
    trace: str | None = None
    text: str | None = None
    model: str | None = None
    status: tuple[int, int] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 20

    def body(self) -> dict[str, Any]:
        """The Elasticsearch request for these filters."""
        return search_body(self.event_id, self.user, self.trace, self.text, self.limit,
                           model=self.model, status=self.status, since_ms=self.since_ms,
                           until_ms=self.until_ms)


def search_query(*, event_id: str | None = None, user: str | None = None,
                 trace: str | None = None, text: str | None = None, model: str | None = None,
                 status: str | None = None, since: str | None = None, until: str | None = None,
                 limit: int = 20, now: datetime) -> Search:
    """`search`'s filters from what a user typed: status classes and times parsed, checked."""
    if limit < 1:
        raise ConfigError("limit must be 1 or more")
    start = parse_time(since, now) if since else None
    end = parse_time(until, now) if until else None
    if start is not None and end is not None and start >= end:
        raise ConfigError("since must be before until")
    return Search(event_id or None, user or None, trace or None, text or None, model or None,
                  status_range(status or None), start, end, limit)


def search(reader: Reader, s: Search) -> list[dict[str, Any]]:
    """Stored documents matching `s`, newest first: what `search --json` prints."""
    return reader.search(event_id=s.event_id, user=s.user, trace=s.trace, text=s.text,
                         model=s.model, status=s.status, since_ms=s.since_ms,
                         until_ms=s.until_ms, limit=s.limit)
