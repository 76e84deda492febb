"""The shipper over a real store and the real sink, against the fault-injection `_bulk` server.

FaultBulkServer is a test tool for retry logic, not an Elasticsearch: these tests check what the
shipper does with each kind of answer (the real-cluster suite is tests/elasticsearch).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from faults import BulkItem, FaultBulkServer

from ingest import records
from ingest.elastic import CLIENT_VERSION, Connection
from ingest.errors import SinkVersionMismatch
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook
from ingest.records import Pending, Row
from ingest.ship import bulk
from ingest.ship.elasticsearch import ElasticsearchSink
from ingest.ship.shipper import Shipper
from ingest.store import PENDING, Budget, Reader, Retention, Store, purge_dead, requeue_dead

T = TypeVar("T")
STREAM = "logs-holysheep.requests-default"
NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
ENRICH = Enricher.default(PriceBook(lookup=None))


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Every scenario is bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll (with a deadline) for a condition the shipper reaches on its own."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


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

    async def add_rows(self, rows: list[Row]) -> None:
        assert all(await self.store.write(rows, (), NOW_MS))

    def seq_of(self, event_id: str) -> int:
        found = [p for p in self.reader.pending(0, 100_000) if p.event_id == event_id]
        assert found, f"{event_id} is not pending"
        return found[0].seq

    def counts(self) -> dict[str, int]:
        return self.reader.counts()

    def close(self) -> None:
        self.reader.close()
        self.store.close()


@pytest.fixture
def server() -> Iterator[FaultBulkServer]:
    with FaultBulkServer() as srv:
        yield srv


@pytest.fixture
def rig(tmp_path: Path, server: FaultBulkServer) -> Iterator[Rig]:
    r = Rig(tmp_path / "data", server)
    yield r
    r.close()


class Recording:
    """The real sink, keeping every bulk body it sent (to check sizes and which ids went)."""

    def __init__(self, sink: ElasticsearchSink) -> None:
        self.inner = sink
        self.url = sink.url
        self.bodies: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # check_version, chunks, close: the real ones

    async def send(self, items: list[Pending], body: bytes) -> records.Outcome:
        self.bodies.append(body)
        return await self.inner.send(items, body)

    def sent_ids(self, bodies: list[bytes] | None = None) -> list[str]:
        found = []
        for body in self.bodies if bodies is None else bodies:
            for line in body.splitlines()[::2]:
                found.append(orjson.loads(line)["create"]["_id"])
        return found


@asynccontextmanager
async def shipping(rig: Rig, *, timeout_s: float = 2.0, record: bool = False,
                   **options: Any) -> AsyncIterator[Shipper]:
    """A shipper over the real ElasticsearchSink pointed at the fault server, fast backoffs."""
    sink = ElasticsearchSink(Connection(rig.server.url, timeout_s=timeout_s))
    settings: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.1, "idle_poll": 0.01,
                                "rng": random.Random(7), "clock": lambda: NOW_S, **options}
    shipper = Shipper(rig.store, rig.reader, Recording(sink) if record else sink, index=STREAM,
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


# -- the normal path ---------------------------------------------------------------------------


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


def test_per_item_429_retries_only_the_rejected_items(rig: Rig) -> None:
    expected = ids(30)
    throttled = set(expected[3:30:6])  # 5 of them
    seen: list[str] = []

    def record(item: BulkItem) -> bool:
        seen.append(item.id)
        return False  # never rejects: only watches which ids arrive, request after request

    rig.server.per_item_429(record, times=None)
    rig.server.per_item_429(throttled, times=2)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert shipper.stats.retried == 2 * len(throttled)
    assert shipper.stats.indexed == 30
    assert shipper.stats.dead_lettered == 0
    sizes = bulk_sizes(rig.server)
    assert sizes[0] == 30
    assert sum(sizes) == 30 + 2 * len(throttled)
    assert all(n <= len(throttled) for n in sizes[1:])
    arrivals = Counter(seen)
    assert {i: arrivals[i] for i in throttled} == dict.fromkeys(throttled, 3)
    assert {i: arrivals[i] for i in expected if i not in throttled} == dict.fromkeys(
        (i for i in expected if i not in throttled), 1)


@pytest.mark.parametrize("status", [503, 429, 500, 502, 504])
def test_whole_request_failures_are_retried_until_they_pass(rig: Rig, status: int) -> None:
    expected = ids(20)
    rig.server.whole_status(status, times=3)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert shipper.stats.bulk_failures == 3
    # Each item gets its own jittered backoff, so the re-sends may come in several requests.
    sizes = bulk_sizes(rig.server)
    assert sizes[0] == 20 and len(sizes) >= 4
    assert all(0 < n <= 20 for n in sizes)
    assert rig.server.item_statuses == Counter({201: 20})  # each created once, none lost
    assert shipper.paused is None
    assert shipper.stats.dead_lettered == 0


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


# -- refusals ----------------------------------------------------------------------------------


def test_rejected_items_become_dead_letters_and_do_not_block_the_rest(rig: Rig) -> None:
    expected = ids(25)
    bad = {expected[0], expected[12]}  # the very first one, and one in a later batch
    rig.server.reject_ids(bad)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_docs=10) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert rig.server.wait_idle(5.0)
    assert sorted(rig.server.snapshot()) == sorted(set(expected) - bad)
    assert rig.counts() == {"pending": 0, "shipped": 23, "dead": 2, "quarantined": 0}
    letters = rig.reader.dead_letters()
    assert sorted(letter["event_id"] for letter in letters) == sorted(bad)
    for letter in letters:
        assert letter["status"] == 400
        assert letter["error_type"] == "document_parsing_exception"
        assert letter["reason"] == "[1:1] failed to parse: rejected by fault injection"
        assert letter["target"] == STREAM
        assert letter["failed_at"] == NOW_MS
    assert shipper.stats.dead_lettered == 2
    assert shipper.stats.indexed == 23
    assert shipper.stats.retried == 0  # a 400 is never retried
    assert rig.server.items_seen == 25
    shown = rig.reader.dead_letter(letters[0]["seq"])
    assert shown is not None and shown["doc"]["id"] == letters[0]["event_id"]


def test_an_older_stores_id_over_512_bytes_is_a_dead_letter_and_never_stalls_the_rest(
        rig: Rig) -> None:
    """Older releases counted characters: such an event is dead-lettered before it is sent,
    instead of failing (and stalling) every bulk request it would travel in."""
    long_id = "€" * 200  # 200 characters, 600 bytes
    expected = ids(30)

    async def scenario() -> Shipper:
        await rig.add([*expected[:10], long_id, *expected[10:]])
        async with shipping(rig, batch_docs=8) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert rig.server.wait_idle(5.0)
    assert sorted(rig.server.snapshot()) == sorted(expected)
    assert rig.counts() == {"pending": 0, "shipped": 30, "dead": 1, "quarantined": 0}
    [letter] = rig.reader.dead_letters()
    assert (letter["event_id"], letter["status"], letter["error_type"]) == (
        long_id, 400, "id_too_long")
    assert "600 bytes" in letter["reason"]
    assert shipper.paused is None and shipper.stats.bulk_failures == 0
    assert rig.server.items_seen == 30  # never sent


def test_a_whole_request_400_for_one_event_is_narrowed_down_not_a_pause(rig: Rig) -> None:
    expected = ids(40)
    bad = expected[13]
    rig.server.refuse_requests_with([bad])

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_docs=20) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert rig.server.wait_idle(5.0)
    assert sorted(rig.server.snapshot()) == sorted(set(expected) - {bad})
    assert rig.counts() == {"pending": 0, "shipped": 39, "dead": 1, "quarantined": 0}
    [letter] = rig.reader.dead_letters()
    assert (letter["event_id"], letter["status"], letter["error_type"]) == (
        bad, 400, "action_request_validation_exception")
    assert shipper.paused is None
    assert shipper.stats.dead_lettered == 1 and shipper.stats.indexed == 39


def test_a_whole_request_400_for_everything_pauses_and_dead_letters_nothing(rig: Rig) -> None:
    expected = ids(12)
    rig.server.whole_status(400, times=None, error_type="illegal_argument_exception",
                            reason="request [/_bulk] contains unrecognized parameter")

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_docs=6) as shipper:
            task = asyncio.create_task(shipper.drain(timeout=10))
            await until(lambda: shipper.paused is not None, "shipping to pause")
            assert "unrecognized parameter" in (shipper.paused or "")
            assert rig.reader.dead_letters() == []
            rig.server.whole_status(400, times=0)
            await task
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert shipper.paused is None


@pytest.mark.parametrize("kind", ["write", "read_only", "flood_stage"])
def test_a_cluster_block_pauses_shipping_and_keeps_events_pending(rig: Rig, kind: Any) -> None:
    expected = ids(20)
    rig.server.cluster_block(True, kind=kind)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_docs=5) as shipper:
            task = asyncio.create_task(shipper.drain(timeout=10))
            await until(lambda: shipper.paused is not None, "shipping to pause")
            # Blocked for a while: retried (with backoff), never dead-lettered, never shipped.
            await until(lambda: rig.server.bulk_requests >= 6, "retries under the block")
            assert "blocked by" in (shipper.paused or "")
            assert not shipper.up
            assert rig.counts() == {"pending": 20, "shipped": 0, "dead": 0, "quarantined": 0}
            assert rig.reader.dead_letters() == []
            assert rig.server.snapshot() == {}
            assert shipper.stats.dead_lettered == 0
            rig.server.cluster_block(False)
            await task
            return shipper

    shipper = run(scenario())
    assert shipper.paused is None
    assert shipper.up
    assert_all_shipped(rig, expected)
    assert shipper.stats.retried > 0


def test_whole_401_pauses_new_leases_until_accepted_again(rig: Rig) -> None:
    expected = ids(40)
    rig.server.whole_status(401, times=None)

    async def scenario() -> tuple[Shipper, Recording]:
        await rig.add(expected)
        async with shipping(rig, batch_docs=5, concurrency=2, record=True) as shipper:
            sink = shipper.sink
            assert isinstance(sink, Recording)
            task = asyncio.create_task(shipper.drain(timeout=10))
            await until(lambda: shipper.paused is not None, "shipping to pause")
            await until(lambda: rig.server.bulk_requests >= 12, "retries while refused")
            assert "INGEST_ELASTICSEARCH_API_KEY" in (shipper.paused or "")
            # Only what was leased before the first refusal came back (the batches in flight
            # and the one waiting for a slot) is retried: nothing new is leased.
            leased = set(sink.sent_ids())
            assert len(leased) <= (2 + 1) * 5
            assert rig.counts()["pending"] == 40
            rig.server.whole_status(401, times=0)
            await task
            return shipper, sink

    shipper, _sink = run(scenario())
    assert shipper.paused is None
    assert_all_shipped(rig, expected)


def test_a_413_halves_the_batch_bytes_and_resends(rig: Rig) -> None:
    expected = ids(10)
    rig.server.whole_status(413, times=1)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_bytes=1_000_000) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert shipper.batch_bytes == 500_000
    assert shipper.paused is None


def test_a_413_for_a_single_document_is_a_dead_letter(rig: Rig) -> None:
    expected = ids(3)
    rig.server.whole_status(413, times=1)

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig, batch_docs=1, concurrency=1) as shipper:
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert sorted(rig.server.snapshot()) == expected[1:]
    [letter] = rig.reader.dead_letters()
    assert (letter["event_id"], letter["status"], letter["error_type"]) == (
        expected[0], 413, "request_entity_too_large")
    assert shipper.stats.dead_lettered == 1


# -- an unreachable server ---------------------------------------------------------------------


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


# -- bounds ------------------------------------------------------------------------------------


def test_batches_are_bounded_by_count(rig: Rig) -> None:
    expected = ids(95)

    async def scenario() -> None:
        await rig.add(expected)
        async with shipping(rig, batch_docs=10) as shipper:
            await shipper.drain(timeout=10)

    run(scenario())
    assert_all_shipped(rig, expected)
    sizes = bulk_sizes(rig.server)
    assert sizes and all(0 < n <= 10 for n in sizes)
    assert sum(sizes) == 95
    assert len(sizes) >= 10


def test_batches_are_bounded_by_bytes(rig: Rig) -> None:
    expected = ids(30)

    async def scenario() -> Recording:
        await rig.add(expected)
        one = max(len(bulk.action(p, STREAM)) for p in rig.reader.pending(0, 100))
        async with shipping(rig, batch_bytes=int(one * 2.5), record=True) as shipper:
            await shipper.drain(timeout=10)
            sink = shipper.sink
            assert isinstance(sink, Recording)
            limit = shipper.batch_bytes
            assert all(len(body) <= limit for body in sink.bodies)
            return sink

    sink = run(scenario())
    assert_all_shipped(rig, expected)
    assert all(len(body.splitlines()) == 4 for body in sink.bodies[:-1])  # 2 actions each
    assert sorted(sink.sent_ids()) == expected
    assert all(0 < n <= 2 for n in bulk_sizes(rig.server))


def test_a_document_over_the_byte_limit_goes_alone(rig: Rig) -> None:
    async def scenario() -> Recording:
        await rig.add(["small-1"])
        await rig.add(["huge"], note="x" * 5000)
        await rig.add(["small-2"])
        async with shipping(rig, batch_bytes=2000, record=True) as shipper:
            await shipper.drain(timeout=10)
            sink = shipper.sink
            assert isinstance(sink, Recording)
            return sink

    sink = run(scenario())
    assert_all_shipped(rig, ["small-1", "huge", "small-2"])
    assert [sink.sent_ids([body]) for body in sink.bodies] == [["small-1"], ["huge"],
                                                               ["small-2"]]


def test_leased_events_stay_bounded_with_a_slow_server(rig: Rig) -> None:
    expected = ids(300)
    concurrency, batch_docs = 2, 20
    bound = concurrency * batch_docs * 2
    # Slow, and every item is refused twice first: without the bound, the events waiting for
    # their retry and the fresh ones leased beside them would grow to the whole backlog.
    rig.server.delay(0.01)
    rig.server.per_item_429(1.0, times=2)
    samples: list[int] = []

    async def scenario() -> None:
        await rig.add(expected)
        async with shipping(rig, batch_docs=batch_docs, concurrency=concurrency,
                            backoff_initial=0.05, backoff_max=0.2) as shipper:
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    samples.append(len(shipper._outstanding))
                    await asyncio.sleep(0)

            sampler = asyncio.create_task(sample())
            try:
                await shipper.drain(timeout=15)
            finally:
                done.set()
                await sampler

    run(scenario(), timeout=25)
    assert_all_shipped(rig, expected)
    assert len(samples) > 100
    assert max(samples) <= bound, max(samples)
    assert max(samples) > concurrency * batch_docs  # the samples did catch the piling up
    assert rig.server.item_statuses == Counter({429: 600, 201: 300})
    assert all(n <= batch_docs for n in bulk_sizes(rig.server))


# -- dead letters: replay and purge ------------------------------------------------------------


def test_dlq_replay_after_the_reject_is_cleared(rig: Rig) -> None:
    expected = ids(10)
    bad = expected[4]
    rig.server.reject_ids({bad})

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            # The long-running shipper of `serve`: its cursor is past the event when it is
            # replayed, and it must go back for it.
            task = asyncio.create_task(shipper.run())
            try:
                await until(lambda: rig.counts()["shipped"] == 9, "the good events shipped")
                assert rig.counts() == {"pending": 0, "shipped": 9, "dead": 1,
                                        "quarantined": 0}
                assert [d["event_id"] for d in rig.reader.dead_letters()] == [bad]
                rig.server.reset()
                await rig.store.apply(requeue_dead(None))
                assert rig.reader.dead_letters() == []
                await until(lambda: rig.counts()["shipped"] == 10, "the replayed event shipped")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.server.item_statuses[201] == 10
    assert shipper.stats.indexed == 10


def test_dlq_replay_of_one_seq_leaves_the_others_dead(rig: Rig) -> None:
    expected = ids(6)
    rig.server.reject_ids({expected[1], expected[3]})

    async def scenario() -> None:
        await rig.add(expected)
        seq = rig.seq_of(expected[3])
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            rig.server.reset()
            await rig.store.apply(requeue_dead([seq]))
            await shipper.drain(timeout=10)

    run(scenario())
    assert sorted(rig.server.snapshot()) == sorted(set(expected) - {expected[1]})
    assert [d["event_id"] for d in rig.reader.dead_letters()] == [expected[1]]
    assert rig.counts() == {"pending": 0, "shipped": 5, "dead": 1, "quarantined": 0}


def test_dlq_replay_with_a_replacement_document(rig: Rig) -> None:
    rig.server.mapping_conflict("latency_ms", "float")
    good = make_row("fine")
    raw = orjson.dumps(event("broken", latency_ms="fast"))
    # The enricher only sees validated events; the stored document is what a relay once sent.
    broken = make_row("broken")._replace(
        doc=orjson.dumps({**orjson.loads(make_row("broken").doc), "latency_ms": "fast"}),
        raw=raw)
    fixed = {**orjson.loads(broken.doc), "latency_ms": 12.5, "fixed_by": "operator"}

    async def scenario() -> None:
        await rig.add_rows([broken, good])
        seq = rig.seq_of("broken")
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            [letter] = rig.reader.dead_letters()
            assert letter["event_id"] == "broken"
            assert letter["error_type"] == "document_parsing_exception"
            assert "failed to parse field [latency_ms] of type [float]" in letter["reason"]
            await rig.store.apply(requeue_dead([seq], doc=orjson.dumps(fixed)))
            await shipper.drain(timeout=10)

    run(scenario())
    assert_all_shipped(rig, ["broken", "fine"])
    stored = rig.server.snapshot()["broken"]
    assert stored["latency_ms"] == 12.5
    assert stored["fixed_by"] == "operator"
    assert stored["event"]["original"] == raw.decode()  # the raw event is kept as received


def test_purge_dead_by_age_and_all(rig: Rig) -> None:
    rig.server.reject_ids({"old-0000", "new-0000"})

    async def scenario() -> None:
        async with shipping(rig) as shipper:
            await rig.add(ids(3, "old"))
            shipper.clock = lambda: 1000.0
            await shipper.drain(timeout=10)
            await rig.add(ids(3, "new"))
            shipper.clock = lambda: 2000.0
            await shipper.drain(timeout=10)
            failed_at = {d["event_id"]: d["failed_at"] for d in rig.reader.dead_letters()}
            assert failed_at == {"old-0000": 1_000_000, "new-0000": 2_000_000}
            await rig.store.apply(purge_dead(1_500_000))
            assert [d["event_id"] for d in rig.reader.dead_letters()] == ["new-0000"]
            assert rig.reader.search(event_id="old-0000") == []
            assert rig.counts() == {"pending": 0, "shipped": 4, "dead": 1, "quarantined": 0}
            await rig.store.apply(purge_dead(None))

    run(scenario())
    assert rig.reader.dead_letters() == []
    assert rig.counts() == {"pending": 0, "shipped": 4, "dead": 0, "quarantined": 0}
    assert rig.reader.search(event_id="new-0000") == []
    assert len(rig.reader.search(event_id="new-0001")) == 1  # shipped events are untouched


# -- the server's version ----------------------------------------------------------------------


def test_a_version_mismatch_stops_before_sending_anything(tmp_path: Path) -> None:
    with FaultBulkServer(version="8.15.0") as old:
        r = Rig(tmp_path / "data", old)
        try:
            async def scenario() -> tuple[Shipper, str]:
                await r.add(ids(5))
                async with shipping(r) as shipper:
                    with pytest.raises(SinkVersionMismatch) as caught:
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


# -- the rewind after a replay ------------------------------------------------------------------


def test_requeued_shipped_rows_are_resent_as_conflicts(rig: Rig) -> None:
    expected = ids(8)

    def back_to_pending(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE events SET state = {PENDING}")

    async def scenario() -> Shipper:
        await rig.add(expected)
        async with shipping(rig) as shipper:
            await shipper.drain(timeout=10)
            await rig.store.apply(back_to_pending)
            await shipper.drain(timeout=10)
            return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.server.item_statuses == Counter({201: 8, 409: 8})
    assert (shipper.stats.indexed, shipper.stats.conflicts) == (8, 8)

