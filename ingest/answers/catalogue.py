"""The entry points every caller uses (CLI, dashboard API): report answers and search."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ingest.answers import reports
from ingest.errors import ConfigError
from ingest.records import Query

if TYPE_CHECKING:
    from ingest.store import Reader

COST_BY = ("day", "model", "user")
# The classes `records.status_class` gives: 1xx to 5xx, and 429 on its own (not in 4xx).
_STATUS_CLASS = re.compile(r"[1-5]xx|429")


def answer(question: str, q: Query, by: str, reader: Reader) -> dict[str, Any]:
    """`question` answered from the embedded store: what `report --json` prints."""
    if question == "latency":
        return reports.latency_result(q, reader.latencies(q), "exact")
    if question == "errors":
        return reports.errors_result(q, reader.error_counts(q),
                                     reader.top_errors(q, reports.TOP_ERRORS))
    if question == "cost":
        if by not in COST_BY:
            raise ConfigError(f"by must be one of {', '.join(COST_BY)}")
        return reports.cost_result(q, by, reader.cost(q, by))
    raise ConfigError(f"{question!r} is not a question: ask {', '.join(reports.DEFAULT_SINCE)}")


def status_class(value: str | None) -> str | None:
    """A status class as the enrichment names it: `2xx`, `4xx`, `5xx`..., or `429`."""
    if value is None:
        return None
    name = value.strip().lower()
    if not _STATUS_CLASS.fullmatch(name):
        raise ConfigError(f"status {value!r}: use a class, 1xx to 5xx, or 429 (which 4xx "
                          "leaves out, as the enrichment and the metrics do)")
    return name


@dataclass(frozen=True)
class Search:
    """The filters of `search`; None means not given (no window at all by default)."""

    event_id: str | None = None
    user: str | None = None
    trace: str | None = None
    text: str | None = None
    model: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 20

    def body(self) -> dict[str, Any]:
        """The Elasticsearch request for these filters."""
        from ingest.answers.elasticsearch import search_body

        return search_body(self.event_id, self.user, self.trace, self.text, self.limit,
                           model=self.model, status_class=self.status, since_ms=self.since_ms,
                           until_ms=self.until_ms)


def search_query(*, event_id: str | None = None, user: str | None = None,
                 trace: str | None = None, text: str | None = None, model: str | None = None,
                 status: str | None = None, since: str | None = None, until: str | None = None,
                 limit: int = 20, now: datetime) -> Search:
    """`search`'s filters from what a user typed: status classes and times parsed, checked."""
    if limit < 1:
        raise ConfigError("limit must be 1 or more")
    start = reports.parse_time(since, now) if since else None
    end = reports.parse_time(until, now) if until else None
    if start is not None and end is not None and start >= end:
        raise ConfigError("since must be before until")
    return Search(event_id or None, user or None, trace or None, text or None, model or None,
                  status_class(status or None), start, end, limit)


def search(reader: Reader, s: Search) -> list[dict[str, Any]]:
    """Stored documents matching `s`, newest first: what `search --json` prints."""
    return reader.search(event_id=s.event_id, user=s.user, trace=s.trace, text=s.text,
                         model=s.model, status=s.status, since_ms=s.since_ms,
                         until_ms=s.until_ms, limit=s.limit)
