"""The shipper over the real ElasticsearchSink and HTTP, against the fault-injection server.

What only a socket shows: the client's timeouts, a server refusing or resetting connections,
a lost response, the documents as they arrive on the wire. The shipper's rules themselves are
tested in memory (tests/unit/ship/test_shipper.py); the real-cluster suite is
tests/elasticsearch. FaultBulkServer is a test tool, not an Elasticsearch.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from faults import FaultBulkServer
from shipping_events import NOW_MS, NOW_S, STREAM, event, ids, make_row

from ingest.elastic import CLIENT_VERSION, Connection
from ingest.errors import VersionMismatch
from ingest.ship.elasticsearch import ElasticsearchSink
from ingest.ship.shipper import Shipper
from ingest.store import Budget, Reader, Retention, Store
from ingest.testing import run_bounded as run

pytestmark = pytest.mark.integration




async def until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll (with a deadline) for a condition the shipper reaches on its own."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Rig:
    """A started store, a reader on it and the fault server; shippers built on demand."""

    def __init__(self, data: Path, server: FaultBulkServer) -> None:
        self.store = Store(data, budget=Budget(min_free_bytes=0),
                           retention=Retention(keep_pending=True), housekeeping_s=3600)
        self.store.start()
        self.reader = Reader(data)
        self.server = server

    async def add(self, event_ids: list[str], **fields: Any) -> list[str]:
        inserted = await self.store.write([make_row(i, **fields) for i in event_ids], (), NOW_MS)
        assert all(inserted)
        return event_ids

    def counts(self) -> dict[str, int]:
        return self.reader.counts()

    def close(self) -> None:
        self.reader.close()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path, server: FaultBulkServer) -> Iterator[Rig]:
    r = Rig(tmp_path / "data", server)
    yield r
    r.close()


@asynccontextmanager
async def shipping(rig: Rig, *, timeout_s: float = 2.0,
                   **options: Any) -> AsyncIterator[Shipper]:
    """A shipper over the real ElasticsearchSink pointed at the fault server, fast backoffs."""
    sink = ElasticsearchSink(Connection(rig.server.url, timeout_s=timeout_s))
    settings: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.1, "idle_poll": 0.01,
                                "rng": random.Random(7), "clock": lambda: NOW_S, **options}
    shipper = Shipper(rig.store, rig.reader, sink, index=STREAM,
                      **settings)
    try:
        yield shipper
    finally:
        await sink.close()


def bulk_sizes(server: FaultBulkServer) -> list[int]:
    """Item count of every bulk request the server saw, in order."""
    return [n for _method, path, n in server.requests_log if path.endswith("/_bulk")]


def assert_all_shipped(rig: Rig, expected: list[str]) -> None:
    assert rig.server.wait_idle(5.0)
    assert sorted(rig.server.snapshot()) == sorted(expected)
    assert rig.counts() == {"pending": 0, "shipped": len(expected), "dead": 0, "quarantined": 0}
    assert rig.reader.dead_letters() == []


def test_every_event_is_indexed_exactly_once(rig: Rig) -> None:
    expected = ids(50)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.server.items_seen == 50
    assert rig.server.item_statuses == Counter({201: 50})
    assert shipper.stats.indexed == 50
    assert shipper.stats.conflicts == shipper.stats.retried == shipper.stats.dead_lettered == 0
    assert shipper.server_version == "9.1.0"
    assert shipper.paused is None
    assert shipper._outstanding == set()
    # What was indexed is the stored document plus the raw event, under the deterministic id.
    stored = rig.server.snapshot()["evt-0007"]
    assert stored["id"] == "evt-0007"
    assert stored["@timestamp"] == "2023-11-14T22:13:19.000Z"
    assert orjson.loads(stored["event"]["original"]) == event("evt-0007")


def test_a_timed_out_bulk_is_resent_and_meets_409_not_a_duplicate(rig: Rig) -> None:
    expected = ids(10)
    # The first bulk outlasts the 0.5 s client timeout; the server still applies it at 0.6 s,
    # as Elasticsearch does. The re-send (at >= 0.5 s) waits 0.3 s, so it is answered after the
    # first was applied (>= 0.8 s) and before its own timeout.
    rig.server.delay(0.6)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, timeout_s=0.5) as shipper:
            task = asyncio.create_task(shipper.drain(timeout=10))
            await until(lambda: rig.server.bulk_requests >= 1, "the first bulk request")
            rig.server.delay(0.3)
            await task
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert shipper.stats.bulk_failures == 1
    assert "timed out" in (shipper.last_error or "")
    assert sum(bulk_sizes(rig.server)) == 20  # all 10 twice, the re-sends maybe split
    assert rig.server.item_statuses == Counter({201: 10, 409: 10})
    assert shipper.stats.conflicts == 10
    assert shipper.stats.indexed == 0


def test_a_lost_response_is_resent_and_counted_as_conflicts(rig: Rig) -> None:
    expected = ids(12)
    rig.server.lose_responses(1)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.server.item_statuses == Counter({201: 12, 409: 12})
    assert shipper.stats.conflicts == 12
    assert shipper.stats.bulk_failures == 1


def test_server_down_before_start_then_up(rig: Rig) -> None:
    expected = ids(15)
    rig.server.down()

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            task = asyncio.create_task(shipper.drain(timeout=10))
            await until(lambda: shipper.status == "waiting for Elasticsearch", "waiting")
            assert "cannot connect" in (shipper.last_error or "")
            await asyncio.to_thread(rig.server.up)
            await task
            return shipper

    shipper = run(scenario())
    assert shipper.status == "shipping"
    assert_all_shipped(rig, expected)


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_server_down_while_shipping_then_up(rig: Rig, mode: Any) -> None:
    expected = ids(30)
    rig.server.delay(0.3)  # keeps the first bulk in flight when the server goes down

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_docs=10) as shipper:
            task = asyncio.create_task(shipper.drain(timeout=10))
            await until(lambda: rig.server.bulk_requests >= 1, "the first bulk request")
            await asyncio.to_thread(rig.server.down, mode)
            await until(lambda: shipper.stats.bulk_failures >= 3, "failures while down")
            assert rig.counts()["shipped"] == 0
            rig.server.delay(0)
            await asyncio.to_thread(rig.server.up)
            await task
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    # The request cut off by down() was never applied: each event was created exactly once.
    assert rig.server.item_statuses == Counter({201: 30})
    assert shipper.stats.dead_lettered == 0


def test_a_version_mismatch_stops_before_sending_anything(tmp_path: Path) -> None:
    with FaultBulkServer(version="8.15.0") as old:
        r = Rig(tmp_path / "data", old)
        try:
            async def scenario() -> tuple[Shipper, str]:
                await r.add(ids(5))
                async with shipping(r) as shipper:
                    with pytest.raises(VersionMismatch) as caught:
                        await shipper.drain(timeout=5)
                    return shipper, str(caught.value)

            shipper, message = run(scenario())
            assert "8.15.0" in message
            assert CLIENT_VERSION in message
            assert "elasticsearch>=8,<9" in message
            assert shipper.status == "stopped"
            assert shipper.last_error == message
            assert old.bulk_requests == 0
            assert r.counts()["pending"] == 5
        finally:
            r.close()
