"""The question catalogue: latency, errors, cost; one result shape, two backends (store, ES)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ingest import durations
from ingest.answers.runs import SortedRuns
from ingest.errors import ConfigError
from ingest.receive.enrich import LatencyBucket
from ingest.records import Query

PERCENTS = (50, 90, 95, 99)
BUCKETS = (*(name for _, name in LatencyBucket().bounds), LatencyBucket().last)
TOP_ERRORS = 3
DEFAULT_SINCE = {"latency": "24h", "errors": "1h", "cost": "7d"}


def parse_time(value: str, now: datetime) -> int:
    """`24h`, `7d`, `30m` (that long before now) or an ISO 8601 time -> unix ms."""
    try:
        # A bare number is no time: it must say its unit (or be an ISO 8601 year, say).
        delta = durations.parse(value, unit_required=True)
    except ValueError:
        pass
    else:
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
    everything = SortedRuns(by_model.values())  # all of them, ranked without a merge
    edges = [0, *(everything.count_below(bound) for bound in _BOUNDS), len(everything)]
    counts = {name: high - low for name, low, high in zip(BUCKETS, edges[:-1], edges[1:],
                                                          strict=True)}
    return {
        "question": "latency", "window": q.window(), "method": method,
        "overall": _stats(everything),
        "by_model": [{"model": model, **_stats(values)}
                     for model, values in sorted(by_model.items(), key=lambda kv: -len(kv[1]))],
        "buckets": counts,
    }


def _stats(ordered: Sequence[float]) -> dict[str, Any]:
    return {"count": len(ordered),
            **{f"p{p}": round_to(percentile(ordered, p)) for p in PERCENTS}}


def round_to(value: float | None) -> float | None:
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
