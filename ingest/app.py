"""`create_app(settings)`: FastAPI for health, readiness and metrics; raw ASGI for the webhook."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest.enrich import Enricher
from ingest.errors import StoreError
from ingest.metrics import CONTENT_TYPE, Metrics
from ingest.prices import PriceBook
from ingest.settings import Settings
from ingest.store import Store
from ingest.webhook import WebhookEndpoint, http_status

WEBHOOK_PATH = "/webhooks/holysheep"
log = logging.getLogger("ingest")


class ReceiverApp(FastAPI):
    """FastAPI, except that `POST /webhooks/holysheep` goes straight to its raw ASGI endpoint.

    The webhook is the hot path: FastAPI's middleware stack (telemetry, error and exception
    handlers, exit stacks, body limits) costs more per request than verifying and storing.
    """

    webhook: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await self.webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


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
        # Everything loaded so far (the price snapshot alone is ~20k objects) lives as long as
        # the process: frozen, the collector no longer re-scans it while requests allocate.
        prices.warm(int(clock() * 1000))
        gc.collect()
        gc.freeze()
        # The fsync thread needs the GIL back to report each commit; with the default 5 ms
        # switch interval it waited behind the busy loop while every request waited on it.
        sys.setswitchinterval(0.0005)
        try:
            yield
        finally:
            store.close()
            log.info("store closed")

    app = ReceiverApp(title="holysheep-ingest", lifespan=lifespan, docs_url=None,
                      redoc_url=None)
    app.webhook = webhook
    app.state.store = store
    app.state.metrics = metrics
    # Also routed, so other methods on the path get FastAPI's 405.
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
