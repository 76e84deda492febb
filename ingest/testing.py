"""In-process test helpers shipped beside the code: signed requests, rows, a filled store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from ingest.receive.prices import PriceBook
from ingest.receive.signing import signed_headers
from ingest.records import Row

SECRET = "test-secret-0123456789abcdef"


def signed(body: bytes | dict[str, Any] | list[Any], secret: str = SECRET,
           timestamp: int | None = None, content_type: str = "application/json",
           ) -> tuple[bytes, dict[str, str]]:
    """A body (JSON-encoded if not bytes) and the headers that sign it now (or at `timestamp`)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": content_type,
               **signed_headers(secret, raw, int(time.time()) if timestamp is None else timestamp)}
    return raw, headers


def row(event_id: str = "e1", **fields: Any) -> Row:
    """A store row by keyword: every column not given is None (times 0), the document and raw
    bytes `{"id": event_id}` unless given."""
    doc = fields.pop("doc", None) or orjson.dumps({"id": event_id})
    columns: dict[str, Any] = dict.fromkeys(Row._fields)
    columns.update(event_id=event_id, received_at=0, ts=0, doc=doc, raw=doc)
    columns.update(fields)
    return Row(**columns)


def fill_store(data_dir: Path, events: Iterable[dict[str, Any]], received_ms: int,
               prices: PriceBook | None = None, group: int = 5000) -> None:
    """Store `events` through the normal validate, enrich and write path (benchmarks, tests)."""
    from ingest.receive.body import validate
    from ingest.receive.enrich import Enricher
    from ingest.store import Budget, Store

    enricher = Enricher.default(prices or PriceBook(lookup=None))

    async def run() -> None:
        store = Store(data_dir, budget=Budget(max_bytes=1 << 40, min_free_bytes=0))
        store.start()
        batch = []
        for event in events:
            raw = orjson.dumps(event)
            batch.append(enricher.row(validate(orjson.loads(raw)), raw, received_ms))
            if len(batch) == group:
                await store.write(batch)
                batch = []
        if batch:
            await store.write(batch)
        store.catch_up()  # as a store that has been running: search tables complete
        store.close()

    asyncio.run(run())


