"""Enrichment as small pure processors `(Draft) -> Draft`, composed by `Enricher`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from ingest.receive.body import derived_id, encode
from ingest.receive.prices import PriceBook
from ingest.records import ERROR_STATUS, Row, iso_ms, status_class

# Event times outside this range are typos or seconds-as-ms; they fall back to receive time.
_MIN_MS = 946_684_800_000  # 2000-01-01
_MAX_MS = 4_102_444_800_000  # 2100-01-01
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INTEGER = re.compile(r"-?[0-9]{1,19}")


@dataclass(slots=True)
class Draft:
    """An event on its way through the processors."""

    doc: dict[str, Any]
    received_ms: int
    ts_ms: int = 0


Processor = Callable[[Draft], Draft]


def assign_id(draft: Draft) -> Draft:
    """`id` is the idempotency key; an event without one gets a hash of its content."""
    doc = draft.doc
    if not doc.get("id"):
        doc["id"] = derived_id(doc)
        doc["id_source"] = "derived"
    return draft


def event_time(value: Any) -> tuple[int, str] | None:
    """Unix ms from the event's `timestamp` (ms per the contract; seconds and ISO tolerated)."""
    if isinstance(value, str):
        text = value.strip()
        if not _INTEGER.fullmatch(text):
            ms = _iso_ms(text)
            return (ms, "event") if ms is not None and _MIN_MS <= ms < _MAX_MS else None
        value = int(text)
    if value.__class__ is int and _MIN_MS <= value < _MAX_MS:  # the contract's case, first
        return value, "event"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if _MIN_MS <= value < _MAX_MS:
        return int(value), "event"
    if _MIN_MS / 1000 <= value < _MAX_MS / 1000:
        return int(value * 1000), "event_seconds"
    return None


def _iso_ms(text: str) -> int | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Integer arithmetic: a float product would lose a millisecond now and then.
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def stamp(draft: Draft) -> Draft:
    """`@timestamp` from the event's time, else receive time, saying which in `timestamp_source`."""
    doc = draft.doc
    found = event_time(doc.get("timestamp"))
    draft.ts_ms, source = found if found else (draft.received_ms, "received")
    doc["@timestamp"] = iso_ms(draft.ts_ms)
    doc["timestamp_source"] = source
    doc["received_at"] = _received_iso(draft.received_ms)
    return draft


@lru_cache(maxsize=64)
def _received_iso(ms: int) -> str:
    # Every event of a request shares its receive time.
    return iso_ms(ms)


class LatencyBucket:
    """`latency_ms` (older senders: `response_time_ms`) and its bucket name."""

    def __init__(self, bounds: Iterable[tuple[float, str]] = ((50, "ultra-fast"), (100, "fast"),
                                                              (200, "normal")),
                 last: str = "slow") -> None:
        self.bounds = tuple(bounds)
        self.last = last

    def __call__(self, draft: Draft) -> Draft:
        doc = draft.doc
        latency = doc.get("latency_ms")
        if latency is None:
            latency = doc.get("response_time_ms")
            if latency is None:
                return draft
            doc["latency_ms"] = latency
        for bound, name in self.bounds:
            if latency < bound:
                doc["latency_bucket"] = name
                return draft
        doc["latency_bucket"] = self.last
        return draft


def status_tags(draft: Draft) -> Draft:
    """`status_class` (429 gets its own) and `tags`: `error` from 400 up, `rate_limited` on 429."""
    doc = draft.doc
    status = doc.get("status_code")
    if status is None:
        return draft
    doc["status_class"] = status_class(status)
    if status >= ERROR_STATUS:
        tags = doc.get("tags")
        tags = list(tags) if isinstance(tags, list) else [] if tags is None else [tags]
        tags.append("error")
        if status == 429:
            tags.append("rate_limited")
        doc["tags"] = tags
    return draft


def count_tokens(draft: Draft) -> Draft:
    """`tokens_used`: the relay's total, else prompt + completion."""
    usage = draft.doc.get("usage")
    if not usage:
        return draft
    total = usage.get("total_tokens")
    if total is None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt is None and completion is None:
            return draft
        total = (prompt or 0) + (completion or 0)
    draft.doc["tokens_used"] = total
    return draft


class Cost:
    """Our own cost from the price book beside the relay's `cost_usd`, flagged when they differ."""

    def __init__(self, prices: PriceBook, rel_tolerance: float = 0.01,
                 abs_tolerance: float = 1e-6) -> None:
        self.prices = prices
        self.rel = rel_tolerance
        self.abs = abs_tolerance

    def __call__(self, draft: Draft) -> Draft:
        doc = draft.doc
        model, usage = doc.get("model"), doc.get("usage")
        rate = self.prices.rate(model, draft.ts_ms) if model else None
        if rate is None:
            doc["price_source"] = "unknown"
            return draft
        doc["price_source"] = rate.source
        if not usage or (usage.get("prompt_tokens") is None
                         and usage.get("completion_tokens") is None):
            return draft
        computed = round(rate.cost(usage.get("prompt_tokens") or 0,
                                   usage.get("completion_tokens") or 0), 10)
        doc["computed_cost_usd"] = computed
        reported = doc.get("cost_usd")
        if reported is not None:
            doc["cost_mismatch"] = abs(reported - computed) > max(
                self.abs, self.rel * max(abs(reported), abs(computed)))
        return draft


class Enricher:
    """The processor chain plus the step that turns a finished draft into a store row."""

    def __init__(self, processors: Iterable[Processor]) -> None:
        self.processors = tuple(processors)

    @classmethod
    def default(cls, prices: PriceBook, cost_tolerance: float = 0.01) -> Enricher:
        return cls([assign_id, stamp, LatencyBucket(), status_tags, count_tokens,
                    Cost(prices, cost_tolerance)])

    def __call__(self, doc: dict[str, Any], received_ms: int) -> Draft:
        draft = Draft(doc, received_ms)
        for process in self.processors:
            draft = process(draft)
        return draft

    def row(self, doc: dict[str, Any], raw: bytes, received_ms: int) -> Row:
        draft = self(doc, received_ms)
        doc = draft.doc
        usage = doc.get("usage") or {}
        meta = doc.get("user_metadata") or {}
        error = doc.get("error") or {}
        return Row(
            event_id=str(doc["id"]), received_at=received_ms, ts=draft.ts_ms,
            model=doc.get("model"), status_code=doc.get("status_code"),
            latency_ms=doc.get("latency_ms"), user_id=meta.get("user_id"),
            trace_id=meta.get("trace_id"), error_message=error.get("message"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"), tokens_used=doc.get("tokens_used"),
            cost_usd=doc.get("cost_usd"), computed_cost_usd=doc.get("computed_cost_usd"),
            doc=encode(doc), raw=raw)


def unpriced(row: Row) -> bool:
    """A model and token counts but no computed cost: the price book does not know the model."""
    return (row.computed_cost_usd is None and row.model is not None
            and (row.prompt_tokens is not None or row.completion_tokens is not None))
