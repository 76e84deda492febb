"""`/api/v1/`: the report questions, search, the time series and the quota, as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingest.answers import catalogue, reports
from ingest.errors import AccessDenied, ConfigError, IngestError, NotFound, http_status
from ingest.records import Query
from ingest.store import Reader, background_priority
from ingest.ui import series
from ingest.ui.access import COOKIE, Gate
from ingest.ui.quota import QuotaView

T = TypeVar("T")
PREFIX = "/api/v1"
SEARCH_DEFAULT, SEARCH_MAX = 50, 1000
SERIES_SINCE = "24h"
_WINDOW = frozenset({"since", "until", "model", "user"})
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class Readers:
    """A few read connections for the API, used off the event loop, one query each at a time.

    Opened on first use: the store file exists only once the receiver has started.
    """

    def __init__(self, data_dir: Path, size: int = 2) -> None:
        self.data_dir, self.size = data_dir, size
        self._free: asyncio.Queue[Reader] | None = None
        self._all: list[Reader] = []
        # The dashboard's queries share the core with the webhook's event loop: on threads of
        # lower priority they run in its idle time instead of taking its share.
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="dashboard-read",
                                        initializer=background_priority)

    async def run(self, work: Callable[[Reader], T]) -> T:
        if self._free is None:
            self._free = asyncio.Queue()
            for _ in range(self.size):
                reader = Reader(self.data_dir, threads=True)
                self._all.append(reader)
                self._free.put_nowait(reader)
        free = self._free
        reader = await free.get()
        task = asyncio.get_running_loop().run_in_executor(self._pool, work, reader)
        # Back in the pool when the thread is done, even if the request was cancelled before:
        # never two queries on one connection.
        task.add_done_callback(lambda _: free.put_nowait(reader))
        return await asyncio.shield(task)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for reader in self._all:
            reader.close()
        self._all.clear()
        self._free = None


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=_NO_STORE)


def error_response(exc: IngestError) -> Response:
    status = http_status(exc)
    response = json_response({"error": exc.code, "message": exc.message}, status)
    if isinstance(exc, AccessDenied):
        response.headers["WWW-Authenticate"] = 'Bearer realm="holysheep-ingest"'
    return response


def params(request: Request, allowed: frozenset[str]) -> dict[str, str | None]:
    """The query parameters, each once and known; empty ones count as not given."""
    given: dict[str, str | None] = dict.fromkeys(allowed)
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise ConfigError(f"unknown parameter {name!r}: " + (
                f"use {', '.join(sorted(allowed))}" if allowed else "this takes none"))
        if given[name] is not None:
            raise ConfigError(f"parameter {name!r} given twice")
        given[name] = value.strip() or None
    return given


def number(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        found = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number") from None
    if not low <= found <= high:
        raise ConfigError(f"{name} must be between {low} and {high}")
    return found


def window(p: Mapping[str, str | None], default_since: str, now: datetime) -> Query:
    """The same window rules as `report`: since before until, until defaulting to now."""
    start = reports.parse_time(p["since"] or default_since, now)
    end = reports.parse_time(p["until"], now) if p["until"] else int(now.timestamp() * 1000)
    if start >= end:
        raise ConfigError("since must be before until")
    return Query(start, end, p["model"], p["user"])


def build_router(readers: Readers, gate: Gate, quota: QuotaView,
                 clock: Callable[[], float]) -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    def now() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    async def answered(request: Request, work: Callable[[], Any]) -> Response:
        try:
            if not gate.allows(request.headers.get("authorization"),
                               request.cookies.get(COOKIE)):
                raise AccessDenied("send the dashboard token as 'Authorization: Bearer "
                                   "<INGEST_UI_TOKEN>', or log in at /ui/login")
            return json_response(await work())
        except IngestError as exc:
            return error_response(exc)

    @router.get("/report/{question}")
    async def report(request: Request, question: str) -> Response:
        """What `report QUESTION --json` prints, with its options as parameters."""
        async def work() -> Any:
            if question not in reports.DEFAULT_SINCE:
                raise ConfigError(f"{question!r} is not a question: ask "
                                  f"{', '.join(reports.DEFAULT_SINCE)}")
            p = params(request, _WINDOW | {"by"})
            q = reports.query(question, p["since"], p["until"], p["model"], p["user"], now())
            by = p["by"] or "day"
            if by not in catalogue.COST_BY:
                raise ConfigError(f"by must be one of {', '.join(catalogue.COST_BY)}")
            return await readers.run(lambda r: catalogue.answer(question, q, by, r))
        return await answered(request, work)

    @router.get("/search")
    async def search(request: Request) -> Response:
        """What `search --json` prints (as a list), with its filters as parameters."""
        async def work() -> Any:
            p = params(request, frozenset({"id", "user", "trace", "text", "model", "status",
                                           "since", "until", "limit"}))
            s = catalogue.search_query(
                event_id=p["id"], user=p["user"], trace=p["trace"], text=p["text"],
                model=p["model"], status=p["status"], since=p["since"], until=p["until"],
                limit=number(p["limit"], "limit", SEARCH_DEFAULT, 1, SEARCH_MAX), now=now())
            return {"events": await readers.run(lambda r: catalogue.search(r, s))}
        return await answered(request, work)

    @router.get("/events/{event_id}")
    async def event(request: Request, event_id: str) -> Response:
        """One stored document, by event id."""
        async def work() -> Any:
            params(request, frozenset())
            found = await readers.run(lambda r: catalogue.search(
                r, catalogue.Search(event_id=event_id, limit=1)))
            if not found:
                raise NotFound(f"no stored event has id {event_id!r}")
            return found[0]
        return await answered(request, work)

    async def in_slots(request: Request,
                       answer: Callable[[Query, int, Reader], dict[str, Any]]) -> Response:
        """A time series: the window cut into `step` slots (chosen when not given)."""
        async def work() -> Any:
            p = params(request, _WINDOW | {"step"})
            q = window(p, SERIES_SINCE, now())
            step = series.step_for(q, p["step"])
            return await readers.run(lambda r: answer(q, step, r))
        return await answered(request, work)

    @router.get("/series/traffic")
    async def traffic(request: Request) -> Response:
        """Requests, errors and error rate per model and time slot."""
        return await in_slots(request, series.traffic)

    @router.get("/series/latency")
    async def latency(request: Request) -> Response:
        """Exact p50/p95/p99 per time slot."""
        return await in_slots(request, series.latency)

    @router.get("/top-users")
    async def top_users(request: Request) -> Response:
        """Users by cost over the window."""
        async def work() -> Any:
            p = params(request, _WINDOW | {"limit"})
            q = window(p, SERIES_SINCE, now())
            limit = number(p["limit"], "limit", series.TOP_USERS, 1, 1000)
            return await readers.run(lambda r: series.top_users(q, limit, r))
        return await answered(request, work)

    @router.get("/quota")
    async def relay_quota(request: Request) -> Response:
        """The relay's quota (when INGEST_RELAY_USAGE_URL is set) and when it was polled."""
        async def work() -> Any:
            params(request, frozenset())
            return quota.answer()
        return await answered(request, work)

    return router

