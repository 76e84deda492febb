"""The questions on Elasticsearch: query bodies from elasticsearch/queries, answers parsed."""

from __future__ import annotations

import copy
import json
from typing import Any

from ingest.answers.reports import (
    BUCKETS,
    COST_KEYS,
    PERCENTS,
    cost_result,
    errors_result,
    round_to,
)
from ingest.assets import asset_path
from ingest.errors import ConfigError
from ingest.records import Query, iso_ms

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
    path = asset_path("elasticsearch/queries", f"{question}.json",
                      "Elasticsearch queries") / f"{question}.json"
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
        return {"count": count, **{f"p{p}": round_to(values.get(f"{float(p)}")) for p in PERCENTS}}

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
                limit: int, *, model: str | None = None, status_class: str | None = None,
                since_ms: int | None = None, until_ms: int | None = None) -> dict[str, Any]:
    """The Elasticsearch side of `search`: every filter given must match, newest first."""
    filters: list[dict[str, Any]] = []
    # `status_class` is the enrichment's own field (records.status_class): the same rule.
    for field, value in (("id", event_id), ("user_metadata.user_id", user),
                         ("user_metadata.trace_id", trace), ("model", model),
                         ("status_class", status_class)):
        if value is not None:
            filters.append({"term": {field: value}})
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
