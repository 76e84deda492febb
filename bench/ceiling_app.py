"""Benchmark-only: the receiver with storage taken out, to measure what the rest allows.

Every request goes through the real app (raw ASGI route, header scan, signature check,
parsing, validation, enrichment, metrics, the answer), but `Store.write` answers at once
without inserting, committing or syncing anything: nothing is stored. It measures the
ceiling the HTTP server and the pure steps leave for durable storage, so it is never a
receiver: `webhook_bench.py --ceiling` runs it beside the real one.

    python bench/ceiling_app.py PORT
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence

import uvicorn

from ingest import app as app_module
from ingest.records import Invalid, Row
from ingest.settings import load
from ingest.store import Store


class NoStorage(Store):
    """A store whose writes are answered at once and dropped (for this benchmark only)."""

    async def write(self, rows: Sequence[Row], invalid: Sequence[Invalid] = (),
                    received_ms: int = 0) -> list[bool]:
        self.refuse_if_full()
        return [True] * len(rows)


def main() -> int:
    port = int(sys.argv[1])
    real_build_store = app_module.build_store

    def build_store(*args: object, **kwargs: object) -> Store:
        store = real_build_store(*args, **kwargs)  # type: ignore[arg-type]
        store.__class__ = NoStorage
        return store

    app_module.build_store = build_store  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="hs-ceiling-") as data:
        settings = load(host="127.0.0.1", port=port, data_dir=data, log_level="warning")
        # As `holysheep-ingest serve` runs it.
        uvicorn.run(app_module.create_app(settings), host=settings.host, port=settings.port,
                    log_level=settings.log_level, access_log=False, proxy_headers=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
