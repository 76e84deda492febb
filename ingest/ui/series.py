"""The dashboard's time series and top users, shaped from the store's per-slot rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ingest import durations
from ingest.answers.reports import percentile
from ingest.errors import ConfigError
from ingest.records import Query, iso_ms

if TYPE_CHECKING:
    from ingest.store import Reader

MINUTE = 60_000
# Steps a chart picks from: the finest that keeps it within MAX_SLOTS points.
STEPS = tuple(m * MINUTE for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 10080))
MAX_SLOTS = 200
MAX_ASKED_SLOTS = 2000  # a step given by the caller may be finer, within this
SERIES_PERCENTS = (50, 95, 99)
TOP_USERS = 10


def step_for(q: Query, asked: str | None = None) -> int:
    """The slot length in ms: `asked` (a duration such as 5m) or the finest fitting step."""
    span = q.until_ms - q.since_ms
    if asked:
        try:
            step = int(durations.parse(asked, unit_required=True).total_seconds() * 1000)
        except ValueError:
            raise ConfigError(f"step {asked!r}: use a duration such as 1m, 15m, 1h") from None
        if step < MINUTE:
            raise ConfigError("step must be at least 1m")
        if -(-span // step) > MAX_ASKED_SLOTS:
            raise ConfigError(f"step {asked} cuts this window into more than "
                              f"{MAX_ASKED_SLOTS} slots: choose a longer one")
        return step
    for step in STEPS:
        if -(-span // step) <= MAX_SLOTS:
            return step
    return -(-span // MAX_SLOTS)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)  # as the latency report rounds


def _slots(q: Query, step: int) -> list[str]:
    return [iso_ms(start) for start in range(q.since_ms, q.until_ms, step)]


def traffic(q: Query, step: int, reader: Reader) -> dict[str, Any]:
    """Requests and errors (status >= 400) per model and time slot, and their error rate."""
    slots = _slots(q, step)
    found = reader.traffic(q, step)
    by_model: dict[str | None, dict[str, list[int]]] = {}
    totals = {"requests": [0] * len(slots), "errors": [0] * len(slots)}
    for (slot, model), (requests, errors) in found.items():
        series = by_model.setdefault(model, {"requests": [0] * len(slots),
                                             "errors": [0] * len(slots)})
        series["requests"][slot] += requests
        series["errors"][slot] += errors
        totals["requests"][slot] += requests
        totals["errors"][slot] += errors

    def rates(series: dict[str, list[int]]) -> list[float | None]:
        return [round(e / r, 4) if r else None
                for r, e in zip(series["requests"], series["errors"], strict=True)]

    models = sorted(by_model.items(), key=lambda kv: (-sum(kv[1]["requests"]), str(kv[0])))
    return {"question": "traffic", "window": q.window(), "step_ms": step, "slots": slots,
            "by_model": [{"model": model, **series, "error_rate": rates(series)}
                         for model, series in models],
            "total": {**totals, "error_rate": rates(totals)}}


def latency(q: Query, step: int, reader: Reader) -> dict[str, Any]:
    """Exact p50/p95/p99 of the latencies in each time slot (None where it has none)."""
    slots = _slots(q, step)
    found = reader.latency_slots(q, step)
    answer: dict[str, Any] = {"question": "latency_series", "window": q.window(),
                              "step_ms": step, "method": "exact", "slots": slots,
                              "count": [len(found.get(n, ())) for n in range(len(slots))]}
    for p in SERIES_PERCENTS:
        answer[f"p{p}"] = [_round(percentile(found.get(n, []), p)) for n in range(len(slots))]
    return answer


def top_users(q: Query, limit: int, reader: Reader) -> dict[str, Any]:
    """The users with the highest relay-reported cost (then computed cost, then requests)."""
    rows = reader.user_costs(q)
    rows.sort(key=lambda r: (-r["cost_usd"], -r["computed_cost_usd"], -r["requests"],
                             str(r["user"])))
    users = [{**row, "cost_usd": round(row["cost_usd"], 6),
              "computed_cost_usd": round(row["computed_cost_usd"], 6)} for row in rows[:limit]]
    return {"question": "top_users", "window": q.window(), "users": users,
            "total_users": len(rows)}
