"""Events and rows the shipper tests (unit and over HTTP) ship: enriched at a fixed time."""

from __future__ import annotations

from typing import Any

import orjson

from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook
from ingest.records import Row

STREAM = "logs-holysheep.requests-default"
NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
ENRICH = Enricher.default(PriceBook(lookup=None))


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "holysheep_request", "model": "gpt-4o", "status_code": 200,
            "latency_ms": 12.5, "timestamp": NOW_MS - 1000,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            "user_metadata": {"user_id": "user_001", "trace_id": "t-" + event_id}, **fields}


def make_row(event_id: str, **fields: Any) -> Row:
    raw = orjson.dumps(event(event_id, **fields))
    return ENRICH.row(orjson.loads(raw), raw, NOW_MS)


def ids(n: int, prefix: str = "evt") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]
