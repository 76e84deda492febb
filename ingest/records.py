"""The records every stage shares: a stored event's row, a quarantined item, shipping and query
records, and the one timestamp format. The ground floor: it imports nothing of ours."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple


class Row(NamedTuple):
    """One stored event: the columns the store indexes, the document and the raw bytes.

    Built by keyword. A tuple because the store inserts it as it is: its field order is the
    events table's column order (`ingest.store.schema.EVENT_COLUMNS`, checked by a test).
    """

    event_id: str
    received_at: int
    ts: int
    model: str | None
    status_code: int | None
    latency_ms: float | None
    user_id: str | None
    trace_id: str | None
    error_message: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    tokens_used: int | None
    cost_usd: float | None
    computed_cost_usd: float | None
    doc: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Invalid:
    """A quarantined event: its bytes exactly as received (array elements too) and the reason."""

    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored event waiting to be shipped."""

    seq: int
    event_id: str
    doc: bytes
    raw: bytes
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a sink refused an event for good."""

    item: Pending
    status: int
    error_type: str
    reason: str


@dataclass(slots=True)
class Outcome:
    """The parsed answer to one batch sent to a sink."""

    shipped: list[Pending] = field(default_factory=list)
    conflicts: int = 0
    retry: list[Pending] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    blocked: str | None = None


@dataclass(frozen=True)
class Query:
    """A question's filters: the window in unix ms (`until` excluded), model and user."""

    since_ms: int
    until_ms: int
    model: str | None = None
    user: str | None = None

    def window(self) -> dict[str, str]:
        return {"since": iso_ms(self.since_ms), "until": iso_ms(self.until_ms)}


def iso_ms(ms: int) -> str:
    """`2026-11-22T06:34:21.258Z` for unix ms."""
    return f"{_iso_second(ms // 1000)}.{ms % 1000:03d}Z"


@lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    # Events arrive clustered in time: formatting each second once is most of the cost saved.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# The status rule every stage shares: an error from 400 up; 429 (throttled) is a class apart.
ERROR_STATUS = 400


@lru_cache(maxsize=1024)
def status_class(status: int | None) -> str:
    """`2xx`, `4xx`, `5xx`..., `429` on its own, and `unknown` without a status."""
    if status is None:
        return "unknown"
    return "429" if status == 429 else f"{status // 100}xx"
