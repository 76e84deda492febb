"""In-process test helpers shipped beside the code: signed requests, rows, a filled store, and
in-memory fakes of the sink, the cluster and the clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ingest.receive.prices import PriceBook
from ingest.receive.signing import signed_headers
from ingest.records import Outcome, Pending, Row
from ingest.ship.bulk import chunks as bulk_chunks

T = TypeVar("T")
SECRET = "test-secret-0123456789abcdef"


def run_bounded(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run a test scenario on a new event loop; it fails after `timeout` seconds, never hangs."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


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




class VirtualTime:
    """A monotonic clock and a sleep that moves it on instead of waiting, for the Shipper's
    `monotonic=` and `sleep=`: backoffs are checked by the delays asked for, not waited out."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)  # still one turn of the loop: the other tasks run, as they would


SinkHandler = Callable[[list[Pending], bytes], Outcome]


def accept(items: list[Pending], body: bytes) -> Outcome:
    """A sink handler that ships everything it is sent."""
    return Outcome(shipped=list(items))


class FakeSink:
    """The shipper's Sink in memory, as httpx's MockTransport is a transport for a client.

    `handler(items, body)` answers each `send`: an Outcome, or it raises a RemoteError. Every
    send is recorded in `calls`. While `hold` is an unset asyncio.Event, sends wait for it:
    a test keeps requests in flight and releases them when it chooses (`wait_calls` tells when
    they have arrived). `version` answers `check_version` (a callable may raise instead).
    """

    def __init__(self, handler: SinkHandler = accept, *,
                 version: str | Callable[[], str] = "9.1.0",
                 url: str = "http://sink.invalid") -> None:
        self.handler = handler
        self.version = version
        self.url = url
        self.calls: list[tuple[list[Pending], bytes]] = []
        self.version_checks = 0
        self.hold: asyncio.Event | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.closed = False
        self._arrived = asyncio.Event()

    async def check_version(self) -> str:
        self.version_checks += 1
        return self.version() if callable(self.version) else self.version

    def chunks(self, items: Iterable[Pending], index: str, max_docs: int,
               max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]:
        return bulk_chunks(items, index, max_docs, max_bytes)

    async def send(self, items: list[Pending], body: bytes) -> Outcome:
        self.calls.append((list(items), body))
        self._arrived.set()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            return self.handler(list(items), body)
        finally:
            self.in_flight -= 1

    async def wait_calls(self, count: int) -> None:
        """Return once `count` sends have arrived (bound it with asyncio.wait_for)."""
        while len(self.calls) < count:
            self._arrived.clear()
            await self._arrived.wait()

    def sent_ids(self) -> list[str]:
        """The event ids of every send, in order."""
        return [item.event_id for items, _body in self.calls for item in items]

    async def close(self) -> None:
        self.closed = True


BulkHandler = Callable[[bytes, str], dict[str, Any]]
SearchHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


class FakeCluster:
    """A cluster answering from handlers in memory, for ElasticsearchSink and the report queries
    without a server. `bulk(body, filter_path)` and `search(index, body)` return the response
    body or raise a RemoteError, as Cluster does once it has translated the client's exceptions
    (that translation is tested over HTTP). Only these calls are faked; setup calls are not.
    """

    def __init__(self, bulk: BulkHandler | None = None, search: SearchHandler | None = None, *,
                 version: str = "9.1.0", url: str = "http://cluster.invalid:9200") -> None:
        # No client: nothing here reaches a network.
        self.url = url
        self.bulk_handler = bulk
        self.search_handler = search
        self.version = version
        self.bulks: list[tuple[bytes, str]] = []
        self.searches: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    async def check_version(self) -> str:
        return self.version

    async def bulk(self, body: bytes, filter_path: str) -> dict[str, Any]:
        self.bulks.append((body, filter_path))
        if self.bulk_handler is None:
            raise AssertionError("FakeCluster: no bulk handler given")
        return self.bulk_handler(body, filter_path)

    async def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        self.searches.append((index, body))
        if self.search_handler is None:
            raise AssertionError("FakeCluster: no search handler given")
        return self.search_handler(index, body)
