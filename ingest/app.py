"""`create_app(settings)`: FastAPI for health, readiness and metrics; raw ASGI for the webhook."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from ingest.enrich import Enricher
from ingest.errors import StoreError
from ingest.metrics import CONTENT_TYPE, Metrics
from ingest.prices import PriceBook
from ingest.settings import Settings
from ingest.store import Store
from ingest.webhook import WebhookEndpoint, http_status

WEBHOOK_PATH = "/webhooks/holysheep"
log = logging.getLogger("ingest")


def build_store(settings: Settings, clock: Callable[[], float] = time.time) -> Store:
    return Store(
        settings.data_dir,
        sync=settings.store_sync,
        max_bytes=int(settings.max_store_bytes),
        min_free_bytes=int(settings.min_free_disk_bytes),
        retention_ms=int(settings.retention.total_seconds() * 1000),
        housekeeping_s=settings.housekeeping.total_seconds(),
        clock=clock,
    )


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    prices: PriceBook | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The receiver; the store opens on startup and drains on shutdown."""
    secrets = settings.secrets()
    metrics = metrics or Metrics()
    prices = prices or PriceBook.from_file(settings.price_file)
    store = build_store(settings, clock)
    webhook = WebhookEndpoint(
        secrets=secrets,
        tolerance_s=settings.signature_tolerance_s,
        max_body_bytes=int(settings.max_body_bytes),
        store=store,
        enricher=Enricher.default(prices, settings.cost_tolerance),
        metrics=metrics,
        clock=clock,
        retry_after_s=settings.retry_after_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.start()
        log.info("store open at %s", store.path)
        try:
            yield
        finally:
            await asyncio.to_thread(store.close)
            log.info("store closed")

    app = FastAPI(title="holysheep-ingest", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.metrics = metrics
    # The webhook skips FastAPI's request/response machinery: it is the hot path.
    app.router.routes.append(Route(WEBHOOK_PATH, webhook, methods=["POST"]))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: the store takes writes (a round trip through its writer)."""
        try:
            store.refuse_if_full()
            await asyncio.wait_for(store.probe(), timeout=2.0)
        except StoreError as exc:
            return JSONResponse({"status": "unavailable", "reason": exc.code,
                                 "message": exc.message}, status_code=http_status(exc),
                                headers={"Retry-After": str(settings.retry_after_s)})
        except TimeoutError:
            return JSONResponse({"status": "unavailable", "reason": "store_slow",
                                 "message": "the store writer did not answer within 2 s"},
                                status_code=503)
        return JSONResponse({"status": "ready", "store": "writable"})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
