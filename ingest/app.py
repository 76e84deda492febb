"""`create_app(settings)`: FastAPI for health, readiness and metrics; raw ASGI for the webhook."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest.errors import ConfigError, IngestError, RemoteError, StoreError, http_status
from ingest.metrics import CONTENT_TYPE, Metrics
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook
from ingest.receive.webhook import WebhookEndpoint
from ingest.settings import Settings
from ingest.ship.shipper import Shipper, Sink
from ingest.store import Budget, Reader, Retention, Store

if TYPE_CHECKING:
    import httpx

    from ingest.elastic import Connection
    from ingest.receive.server import Limits, Listen
    from ingest.relay_usage import QuotaSink, UsagePoller

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
        budget=Budget(int(settings.max_store_bytes), int(settings.min_free_disk_bytes)),
        retention=Retention(int(settings.retention.total_seconds() * 1000),
                            keep_pending=settings.sink_kind() is not None),
        housekeeping_s=settings.housekeeping.total_seconds(),
        clock=clock,
    )


class StoreGauges:
    """Values for the store gauges. Counts are refreshed off the event loop every `refresh_s`
    (on a large store they take a while); the shipping lag is one index lookup, read at scrape."""

    def __init__(self, clock: Callable[[], float], refresh_s: float = 10.0) -> None:
        self.clock = clock
        self.refresh_s = refresh_s
        self.reader: Reader | None = None
        self._counter: Reader | None = None
        self.shipping = False
        self._cached: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self, data_dir: Path, shipping: bool) -> None:
        # Two connections: one for the counting thread, one for scrapes on the loop.
        self.reader, self.shipping = Reader(data_dir), shipping
        self._counter = Reader(data_dir, threads=True)
        self._task = asyncio.create_task(self._refresh(), name="store-gauges")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for reader in (self.reader, self._counter):
            if reader is not None:
                reader.close()
        self.reader = self._counter = None

    async def _refresh(self) -> None:
        while self._counter is not None:
            with contextlib.suppress(StoreError):
                self._cached = dict(await asyncio.to_thread(self._counts, self._counter))
            await asyncio.sleep(self.refresh_s)

    @staticmethod
    def _counts(reader: Reader) -> dict[str, int]:
        return {**reader.state_counts(), "unindexed": reader.unindexed()}

    def read(self) -> dict[str, float]:
        values = dict(self._cached)
        if self.shipping and self.reader is not None:
            try:
                oldest = self.reader.oldest_pending_ms()
            except StoreError:
                return values
            values["lag_seconds"] = 0.0 if oldest is None else max(
                0.0, self.clock() - oldest / 1000)
        return values


def build_sink(settings: Settings) -> Sink:
    """The configured sink: Elasticsearch's bulk API or a Logstash http input."""
    if settings.sink_kind() == "logstash":
        from ingest.ship.logstash import LogstashConnection, LogstashSink

        if not settings.logstash_url:
            raise ConfigError("INGEST_SINK=logstash needs INGEST_LOGSTASH_URL "
                              "(for example http://logstash:8081)")
        password = settings.logstash_password
        return LogstashSink(LogstashConnection(
            settings.logstash_url, settings.logstash_username,
            password.get_secret_value() if password else None,
            settings.elasticsearch_timeout.total_seconds()))
    # Imported here: the client library costs ~17 MB, paid only when shipping to it.
    from ingest.ship.elasticsearch import ElasticsearchSink

    return ElasticsearchSink(es_connection(settings))


def es_connection(settings: Settings) -> Connection:
    """The cluster connection from settings; ConfigError when no URL is set."""
    from ingest.elastic import Connection

    if not settings.elasticsearch_url:
        raise ConfigError("set INGEST_ELASTICSEARCH_URL (for example http://localhost:9200)")
    key, password = settings.elasticsearch_api_key, settings.elasticsearch_password
    return Connection(
        url=settings.elasticsearch_url,
        api_key=key.get_secret_value() if key else None,
        username=settings.elasticsearch_username,
        password=password.get_secret_value() if password else None,
        ca_cert=settings.elasticsearch_ca_cert,
        verify_certs=settings.elasticsearch_verify_certs,
        timeout_s=settings.elasticsearch_timeout.total_seconds())


def build_shipper(settings: Settings, store: Store, metrics: Metrics,
                  clock: Callable[[], float] = time.time) -> tuple[Shipper, Reader, Sink]:
    """Shipper, its read connection and its sink, from settings (the store must be open)."""
    sink = build_sink(settings)
    reader = Reader(settings.data_dir)
    shipper = Shipper(
        store, reader, sink, index=settings.data_stream,
        batch_docs=settings.ship_batch_docs, batch_bytes=int(settings.ship_batch_bytes),
        concurrency=settings.ship_concurrency,
        backoff_initial=settings.ship_backoff_initial.total_seconds(),
        backoff_max=settings.ship_backoff_max.total_seconds(),
        idle_poll=settings.ship_idle_poll.total_seconds(), clock=clock,
        on_bulk=metrics.bulk_done)
    return shipper, reader, sink


def start_shipping(settings: Settings, store: Store, metrics: Metrics,
                   clock: Callable[[], float]) -> tuple[Shipper, Reader, Sink, asyncio.Task[None]]:
    shipper, reader, sink = build_shipper(settings, store, metrics, clock)
    task = asyncio.create_task(shipper.run(), name="shipper")
    task.add_done_callback(_shipper_ended)
    return shipper, reader, sink, task


async def stop_shipping(shipper: Shipper, reader: Reader, sink: Sink,
                        task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, RemoteError):
        await task
    await sink.close()
    reader.close()


def _shipper_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        message = exc.message if isinstance(exc, IngestError) else repr(exc)
        log.error("shipping stopped: %s (the receiver keeps accepting and storing)", message)


def server_options(settings: Settings) -> tuple[Listen, Limits]:
    """Where and how the HTTP server listens; the TLS pair is checked here, one clear line."""
    from ingest.receive.server import LINGER_BODIES, Limits, Listen, tls_files

    listen = Listen(settings.host, settings.port, settings.log_level,
                    tls_files(settings.tls_cert, settings.tls_key))
    return listen, Limits(
        header_timeout=settings.header_timeout.total_seconds(),
        body_timeout=settings.body_timeout.total_seconds(),
        max_connections=settings.max_connections,
        retry_after_s=settings.retry_after_s,
        linger_bytes=LINGER_BODIES * int(settings.max_body_bytes))


def build_relay_poller(settings: Settings, sink: QuotaSink,
                       transport: httpx.AsyncBaseTransport | None = None,
                       clock: Callable[[], float] = time.time) -> UsagePoller:
    """The relay usage poller `serve` runs; settings guarantee a URL and a key together."""
    from ingest.relay_usage import UsagePoller

    if settings.relay_usage_url is None or settings.relay_api_key is None:
        raise ConfigError("relay usage polling needs INGEST_RELAY_USAGE_URL and "
                          "INGEST_RELAY_API_KEY")
    return UsagePoller(
        settings.relay_usage_url, settings.relay_api_key.get_secret_value(),
        remaining_field=settings.relay_usage_remaining_field,
        total_field=settings.relay_usage_total_field,
        interval_s=settings.relay_usage_interval.total_seconds(),
        timeout_s=settings.relay_usage_timeout.total_seconds(), sink=sink,
        transport=transport, clock=clock)


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    prices: PriceBook | None = None,
    clock: Callable[[], float] = time.time,
    relay_transport: httpx.AsyncBaseTransport | None = None,
    gauge_refresh_s: float = 10.0,
) -> FastAPI:
    """The receiver; the store opens on startup and drains on shutdown.

    `relay_transport` replaces the network for the relay's usage endpoint (tests);
    `gauge_refresh_s` is how often the store's counts are refreshed for /metrics."""
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
        # Requests make short-lived containers that reference counting frees; collecting the
        # young generation every 700 allocations only re-scans the requests in flight.
        gc.set_threshold(20_000, 20, 20)
        shipping = start_shipping(settings, store, metrics, clock) \
            if settings.sink_kind() else None
        gauges.start(settings.data_dir, shipping is not None)
        app.state.shipper = shipping[0] if shipping else None
        usage: UsagePoller | None = None
        if quota is not None:
            usage = build_relay_poller(settings, dashboard.quota if dashboard else quota,
                                       relay_transport, clock)
            usage.start()
        try:
            yield
        finally:
            if usage:
                await usage.stop()
            if shipping:
                await stop_shipping(*shipping)
            await gauges.stop()
            if dashboard:
                dashboard.close()
            store.close()
            log.info("store closed")

    gauges = StoreGauges(clock, gauge_refresh_s)
    metrics.watch_store(gauges.read)
    quota = None
    if settings.relay_usage_url:  # without a usage endpoint there is no quota to show
        # Imported only then: the HTTP client costs ~6 MB of a receiver that does not poll.
        from ingest.relay_usage import REASONS

        quota = metrics.watch_relay_quota(REASONS)
    dashboard = None
    if settings.ui:
        from ingest.ui.dashboard import Dashboard

        dashboard = Dashboard(settings, quota, clock)  # refuses to be open beyond loopback
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
            await asyncio.wait_for(store.probe(), timeout=2.0)  # refuses when full, too
        except StoreError as exc:
            return JSONResponse({"status": "unavailable", "reason": exc.code,
                                 "message": exc.message}, status_code=http_status(exc),
                                headers={"Retry-After": str(settings.retry_after_s)})
        except TimeoutError:
            return JSONResponse({"status": "unavailable", "reason": "store_slow",
                                 "message": "the store writer did not answer within 2 s"},
                                status_code=503)
        shipper = app.state.shipper
        if shipper is None:
            return JSONResponse({"status": "ready", "store": "writable"})
        sink = {"status": shipper.status, "paused": shipper.paused,
                "last_error": shipper.last_error, "server_version": shipper.server_version}
        # Still ready: webhooks are accepted and stored while Elasticsearch is away.
        return JSONResponse({"status": "ready" if shipper.up else "degraded",
                             "store": "writable", "sink": sink})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if dashboard:
        dashboard.mount(app)

    return app
