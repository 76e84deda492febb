"""The shipper over a real store and an in-memory sink (FakeSink), on virtual time.

No sockets and no waiting: backoffs move a virtual clock (the delays asked for are checked,
not waited out), and requests are held in flight and released by events. What needs HTTP (the
client's timeouts, a server going down, the wire) is in tests/integration/test_shipper_http.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from shipping_events import NOW_MS, NOW_S, STREAM, event, ids, make_row

from ingest.elastic import CREDENTIALS
from ingest.errors import RemoteError, RemoteRefused, RemoteUnavailable, VersionMismatch
from ingest.records import Outcome, Pending, Row
from ingest.remote import answer_error
from ingest.ship import bulk
from ingest.ship.elasticsearch import VALIDATION, ElasticsearchSink
from ingest.ship.shipper import Shipper
from ingest.store import PENDING, Budget, Reader, Retention, Store, purge_dead, requeue_dead
from ingest.testing import FakeCluster, FakeSink, VirtualTime
from ingest.testing import run_bounded as run

REJECTED = "[1:1] failed to parse: rejected by fault injection"
BLOCKS = {  # as Elasticsearch words them: (item status, block)
    "write": (403, "FORBIDDEN/8/index write (api)"),
    "read_only": (403, "FORBIDDEN/5/index read-only (api)"),
    "flood_stage": (429, "TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, "
                         "index has read-only-allow-delete block"),
}



class Index:
    """The documents behind the fake sink: `create` by id (201, then 409), and the faults a
    test sets. Answers are Elasticsearch-shaped and classified by the sink's own `classify`."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.statuses: Counter[int] = Counter()
        self.throttle: dict[str, int] = {}  # id -> per-item 429s still to give
        self.reject: set[str] = set()  # 400 document_parsing_exception, for good
        self.floats: set[str] = set()  # fields mapped as float: a string there is a 400
        self.block: str | None = None  # a cluster block kind
        self.whole: list[RemoteError] = []  # raised for the next requests, one each
        self.refuse: RemoteError | None = None  # raised for every request while set
        self.lose = 0  # requests applied whose answer is then lost
        self.outstanding: list[int] = []  # sampled at each request (set by `sampling`)
        self.shipper: Shipper | None = None

    def __call__(self, items: list[Pending], body: bytes) -> Outcome:
        if self.shipper is not None:
            self.outstanding.append(len(self.shipper._outstanding))
        if self.refuse is not None:
            raise self.refuse
        if self.whole:
            raise self.whole.pop(0)
        lines = body.splitlines()
        answers = [self._item(orjson.loads(meta)["create"]["_id"], orjson.loads(source))
                   for meta, source in zip(lines[::2], lines[1::2], strict=True)]
        if self.lose:
            self.lose -= 1
            raise RemoteUnavailable("bulk request: cannot connect (ConnectionError)")
        return bulk.classify(items, {"errors": True, "items": answers})

    def _item(self, doc_id: str, source: dict[str, Any]) -> dict[str, Any]:
        def answer(status: int, error_type: str = "", reason: str = "") -> dict[str, Any]:
            self.statuses[status] += 1
            result: dict[str, Any] = {"status": status}
            if error_type:
                result["error"] = {"type": error_type, "reason": reason}
            return {"create": result}

        if self.block is not None:
            status, text = BLOCKS[self.block]
            return answer(status, "cluster_block_exception",
                          f"index [{STREAM}] blocked by: [{text}];")
        if self.throttle.get(doc_id, 0) > 0:
            self.throttle[doc_id] -= 1
            return answer(429, "es_rejected_execution_exception", "rejected execution")
        if doc_id in self.reject:
            return answer(400, "document_parsing_exception", REJECTED)
        for name in self.floats:
            if isinstance(source.get(name), str):
                return answer(400, "document_parsing_exception",
                              f"[1:27] failed to parse field [{name}] of type [float] in "
                              f"document with id '{doc_id}'")
        if doc_id in self.docs:
            return answer(409, "version_conflict_engine_exception", "document already exists")
        self.docs[doc_id] = source
        return answer(201)


class Rig:
    """A started store, a reader on it, the index and the fake sink over it; virtual time."""

    def __init__(self, data: Path) -> None:
        self.store = Store(data, budget=Budget(min_free_bytes=0),
                           retention=Retention(keep_pending=True), housekeeping_s=3600)
        self.store.start()
        self.reader = Reader(data)
        self.index = Index()
        self.sink = FakeSink(self.index)
        self.time = VirtualTime()
        self.progress = asyncio.Event()

    def shipper(self, sink: Any = None, **options: Any) -> Shipper:
        """Fast backoffs by default; every bulk answered sets `progress`."""
        settings: dict[str, Any] = {
            "backoff_initial": 0.01, "backoff_max": 0.1, "idle_poll": 0.01,
            "rng": random.Random(7), "clock": lambda: NOW_S, "monotonic": self.time,
            "sleep": self.time.sleep, "on_bulk": lambda _o, _d: self.progress.set(), **options}
        shipper = Shipper(self.store, self.reader, sink or self.sink, index=STREAM, **settings)
        self.index.shipper = shipper
        return shipper

    async def settle(self, check: Callable[[], bool]) -> None:
        """Wait, bulk answer after bulk answer, until `check` holds (bound it with run)."""
        while not check():
            self.progress.clear()
            await self.progress.wait()

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

    def sizes(self) -> list[int]:
        """Item count of every send, in order."""
        return [len(items) for items, _body in self.sink.calls]

    def close(self) -> None:
        self.reader.close()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "data")
    yield r
    r.close()


def drained(rig: Rig, **options: Any) -> Shipper:
    """Store nothing, just drain what is pending with a fresh shipper."""
    async def scenario() -> Shipper:
        shipper = rig.shipper(**options)
        await shipper.drain()
        return shipper

    return run(scenario())


def added_and_drained(rig: Rig, expected: list[str], **options: Any) -> Shipper:
    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper(**options)
        await shipper.drain()
        return shipper

    return run(scenario())


def assert_all_shipped(rig: Rig, expected: list[str]) -> None:
    assert sorted(rig.index.docs) == sorted(expected)
    assert rig.counts() == {"pending": 0, "shipped": len(expected), "dead": 0, "quarantined": 0}
    assert rig.reader.dead_letters() == []


class Upper(random.Random):
    """Backoff jitter at its upper bound: the delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


# -- the normal path ---------------------------------------------------------------------------


def test_every_event_is_indexed_exactly_once(rig: Rig) -> None:
    expected = ids(50)
    shipper = added_and_drained(rig, expected)
    assert_all_shipped(rig, expected)
    assert rig.index.statuses == Counter({201: 50})
    assert sum(rig.sizes()) == 50
    assert shipper.stats.indexed == 50
    assert shipper.stats.conflicts == shipper.stats.retried == shipper.stats.dead_lettered == 0
    assert shipper.server_version == "9.1.0"
    assert shipper.paused is None
    assert shipper._outstanding == set()
    # What is sent is the stored document plus the raw event, under the deterministic id.
    stored = rig.index.docs["evt-0007"]
    assert stored["id"] == "evt-0007"
    assert stored["@timestamp"] == "2023-11-14T22:13:19.000Z"
    assert orjson.loads(stored["event"]["original"]) == event("evt-0007")


def test_per_item_429_retries_only_the_rejected_items(rig: Rig) -> None:
    expected = ids(30)
    throttled = set(expected[3:30:6])  # 5 of them
    rig.index.throttle = dict.fromkeys(throttled, 2)
    shipper = added_and_drained(rig, expected)
    assert_all_shipped(rig, expected)
    assert shipper.stats.retried == 2 * len(throttled)
    assert shipper.stats.indexed == 30
    assert shipper.stats.dead_lettered == 0
    sizes = rig.sizes()
    assert sizes[0] == 30
    assert sum(sizes) == 30 + 2 * len(throttled)
    assert all(n <= len(throttled) for n in sizes[1:])
    arrivals = Counter(rig.sink.sent_ids())
    assert {i: arrivals[i] for i in throttled} == dict.fromkeys(throttled, 3)
    assert {i: arrivals[i] for i in expected if i not in throttled} == dict.fromkeys(
        (i for i in expected if i not in throttled), 1)


def test_whole_request_failures_are_retried_until_they_pass(rig: Rig) -> None:
    """Which statuses are RemoteUnavailable is the sink's business (tests/integration/
    test_elastic_http.py); the shipper retries each of them the same way."""
    expected = ids(20)
    rig.index.whole = [RemoteUnavailable(f"bulk request: HTTP {s}", s) for s in (503, 429, 502)]
    shipper = added_and_drained(rig, expected)
    assert_all_shipped(rig, expected)
    assert shipper.stats.bulk_failures == 3
    assert shipper.last_error == "bulk request: HTTP 502"
    # Each item gets its own jittered backoff, so the re-sends may come in several requests.
    sizes = rig.sizes()
    assert sizes[0] == 20 and len(sizes) >= 4
    assert all(0 < n <= 20 for n in sizes)
    assert rig.index.statuses == Counter({201: 20})  # each created once, none lost
    assert shipper.paused is None
    assert shipper.stats.dead_lettered == 0


def test_retry_backoff_doubles_per_attempt_up_to_the_cap(rig: Rig) -> None:
    rig.index.whole = [RemoteUnavailable("bulk request: HTTP 503", 503)] * 6
    sent_at: list[float] = []
    index = rig.index

    def timed(items: list[Pending], body: bytes) -> Outcome:
        sent_at.append(rig.time.now)
        return index(items, body)

    rig.sink.handler = timed
    added_and_drained(rig, ["only"], backoff_initial=0.5, backoff_max=4.0, rng=Upper(),
                      idle_poll=0.01)
    assert_all_shipped(rig, ["only"])
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(sent_at)]
    # Attempt n waits initial * 2**n (full jitter at its top), never more than the cap; it is
    # sent at the first idle poll (0.01 s) at or after it is due.
    assert gaps == pytest.approx([1.0, 2.0, 4.0, 4.0, 4.0, 4.0], abs=0.025)


def test_a_resent_bulk_whose_first_answer_was_lost_meets_409_not_a_duplicate(rig: Rig) -> None:
    """A timed-out or cut-off bulk may have been applied: the re-send gets 409s, counted as
    conflicts, and nothing is indexed twice."""
    expected = ids(12)
    rig.index.lose = 1
    shipper = added_and_drained(rig, expected)
    assert_all_shipped(rig, expected)
    assert rig.index.statuses == Counter({201: 12, 409: 12})
    assert sum(rig.sizes()) == 24  # all 12 twice, the re-sends maybe split
    assert shipper.stats.conflicts == 12
    assert shipper.stats.indexed == 0
    assert shipper.stats.bulk_failures == 1
    assert "cannot connect" in (shipper.last_error or "")


# -- refusals ----------------------------------------------------------------------------------


def test_rejected_items_become_dead_letters_and_do_not_block_the_rest(rig: Rig) -> None:
    expected = ids(25)
    bad = {expected[0], expected[12]}  # the very first one, and one in a later batch
    rig.index.reject = bad
    shipper = added_and_drained(rig, expected, batch_docs=10)
    assert sorted(rig.index.docs) == sorted(set(expected) - bad)
    assert rig.counts() == {"pending": 0, "shipped": 23, "dead": 2, "quarantined": 0}
    letters = rig.reader.dead_letters()
    assert sorted(letter["event_id"] for letter in letters) == sorted(bad)
    for letter in letters:
        assert letter["status"] == 400
        assert letter["error_type"] == "document_parsing_exception"
        assert letter["reason"] == REJECTED
        assert letter["target"] == STREAM
        assert letter["failed_at"] == NOW_MS
    assert shipper.stats.dead_lettered == 2
    assert shipper.stats.indexed == 23
    assert shipper.stats.retried == 0  # a 400 is never retried
    assert sum(rig.sizes()) == 25
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
        shipper = rig.shipper(batch_docs=8)
        await shipper.drain()
        return shipper

    shipper = run(scenario())
    assert sorted(rig.index.docs) == sorted(expected)
    assert rig.counts() == {"pending": 0, "shipped": 30, "dead": 1, "quarantined": 0}
    [letter] = rig.reader.dead_letters()
    assert (letter["event_id"], letter["status"], letter["error_type"]) == (
        long_id, 400, "id_too_long")
    assert "600 bytes" in letter["reason"]
    assert shipper.paused is None and shipper.stats.bulk_failures == 0
    assert long_id not in rig.sink.sent_ids()  # never sent
    assert sum(rig.sizes()) == 30


def refusing(bad: set[str], error_type: str, reason: str) -> Callable[[bytes, str], Any]:
    """A cluster refusing as a whole (400) every request holding one of `bad`."""
    def handler(body: bytes, filter_path: str) -> dict[str, Any]:
        sent = [orjson.loads(line)["create"]["_id"] for line in body.splitlines()[::2]]
        if bad.intersection(sent) or not bad:
            raise RemoteRefused(f"bulk request: HTTP 400 {error_type}: {reason}", 400,
                              error_type=error_type)
        return {"errors": False, "items": [{"create": {"status": 201}} for _ in sent]}

    return handler


def test_a_whole_request_400_for_one_event_is_narrowed_down_not_a_pause(rig: Rig) -> None:
    expected = ids(40)
    bad = expected[13]
    cluster = FakeCluster(refusing({bad}, VALIDATION, "Validation Failed: 1: bad;"))
    shipper = added_and_drained(rig, expected, sink=ElasticsearchSink(cluster), batch_docs=20)
    assert rig.counts() == {"pending": 0, "shipped": 39, "dead": 1, "quarantined": 0}
    [letter] = rig.reader.dead_letters()
    assert (letter["event_id"], letter["status"], letter["error_type"]) == (
        bad, 400, VALIDATION)
    assert shipper.paused is None
    assert shipper.stats.dead_lettered == 1 and shipper.stats.indexed == 39


def test_a_whole_request_400_for_everything_pauses_and_dead_letters_nothing(rig: Rig) -> None:
    expected = ids(12)
    refuse = refusing(set(), "illegal_argument_exception",
                      "request [/_bulk] contains unrecognized parameter")
    accepting = refusing({"none-of-them"}, "", "")
    cluster = FakeCluster(refuse)

    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper(sink=ElasticsearchSink(cluster), batch_docs=6)
        task = asyncio.create_task(shipper.drain())
        await rig.settle(lambda: shipper.paused is not None)
        assert "unrecognized parameter" in (shipper.paused or "")
        assert rig.reader.dead_letters() == []
        assert rig.counts()["pending"] == 12
        cluster.bulk_handler = accepting
        await task
        return shipper

    shipper = run(scenario())
    assert rig.counts() == {"pending": 0, "shipped": 12, "dead": 0, "quarantined": 0}
    assert shipper.paused is None


@pytest.mark.parametrize("kind", ["write", "read_only", "flood_stage"])
def test_a_cluster_block_pauses_shipping_and_keeps_events_pending(rig: Rig, kind: str) -> None:
    expected = ids(20)
    rig.index.block = kind

    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper(batch_docs=5)
        task = asyncio.create_task(shipper.drain())
        await rig.settle(lambda: shipper.paused is not None)
        # Blocked for a while: retried (with backoff), never dead-lettered, never shipped.
        await rig.sink.wait_calls(6)
        assert "blocked by" in (shipper.paused or "")
        assert not shipper.up
        assert rig.counts() == {"pending": 20, "shipped": 0, "dead": 0, "quarantined": 0}
        assert rig.reader.dead_letters() == []
        assert rig.index.docs == {}
        assert shipper.stats.dead_lettered == 0
        rig.index.block = None
        await task
        return shipper

    shipper = run(scenario())
    assert shipper.paused is None
    assert shipper.up
    assert_all_shipped(rig, expected)
    assert shipper.stats.retried > 0


def test_whole_401_pauses_new_leases_until_accepted_again(rig: Rig) -> None:
    expected = ids(40)
    rig.index.refuse = answer_error("bulk request", 401, credentials=CREDENTIALS)

    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper(batch_docs=5, concurrency=2)
        task = asyncio.create_task(shipper.drain())
        await rig.settle(lambda: shipper.paused is not None)
        await rig.sink.wait_calls(12)  # retries while refused
        assert "INGEST_ELASTICSEARCH_API_KEY" in (shipper.paused or "")
        # Only what was leased before the first refusal came back (the batches in flight
        # and the one waiting for a slot) is retried: nothing new is leased.
        leased = set(rig.sink.sent_ids())
        assert len(leased) <= (2 + 1) * 5
        assert rig.counts()["pending"] == 40
        rig.index.refuse = None
        await task
        return shipper

    shipper = run(scenario())
    assert shipper.paused is None
    assert_all_shipped(rig, expected)


def test_a_413_halves_the_batch_bytes_and_resends(rig: Rig) -> None:
    expected = ids(10)
    rig.index.whole = [RemoteRefused("bulk request: HTTP 413", 413)]
    shipper = added_and_drained(rig, expected, batch_bytes=1_000_000)
    assert_all_shipped(rig, expected)
    assert shipper.batch_bytes == 500_000
    assert shipper.paused is None
    assert rig.sizes()[0] == 10 and sum(rig.sizes()) == 20


def test_a_413_for_a_single_document_is_a_dead_letter(rig: Rig) -> None:
    expected = ids(3)
    rig.index.whole = [RemoteRefused("bulk request: HTTP 413", 413)]
    shipper = added_and_drained(rig, expected, batch_docs=1, concurrency=1)
    assert sorted(rig.index.docs) == expected[1:]
    [letter] = rig.reader.dead_letters()
    assert (letter["event_id"], letter["status"], letter["error_type"]) == (
        expected[0], 413, "request_entity_too_large")
    assert shipper.stats.dead_lettered == 1


# -- an unreachable server ---------------------------------------------------------------------


def test_server_down_before_start_then_up_with_growing_waits(rig: Rig) -> None:
    expected = ids(15)
    down = RemoteUnavailable("reading the cluster version: cannot connect (ConnectionError)")
    tried = asyncio.Event()
    state = {"down": True}

    def version() -> str:
        tried.set()
        if state["down"]:
            raise down
        return "9.1.0"

    rig.sink.version = version

    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper(rng=Upper(), backoff_initial=0.5, backoff_max=4.0)
        task = asyncio.create_task(shipper.drain())
        while rig.sink.version_checks < 6:
            tried.clear()
            await tried.wait()
        assert shipper.status == "waiting for Elasticsearch"
        assert "cannot connect" in (shipper.last_error or "")
        assert rig.sink.calls == []
        state["down"] = False
        await task
        return shipper

    shipper = run(scenario())
    assert shipper.status == "shipping"
    assert_all_shipped(rig, expected)
    assert rig.time.slept[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped


def test_server_down_while_shipping_then_up(rig: Rig) -> None:
    """The request in flight when the server goes is not applied: each event created once.
    (Refused and reset connections over a real socket: tests/integration.)"""
    expected = ids(30)
    cut = RemoteUnavailable("bulk request: cannot connect (ConnectionError)")

    async def scenario() -> Shipper:
        await rig.add(expected)
        rig.sink.hold = asyncio.Event()
        shipper = rig.shipper(batch_docs=10)
        task = asyncio.create_task(shipper.drain())
        await rig.sink.wait_calls(1)
        rig.index.refuse = cut
        rig.sink.hold.set()
        await rig.settle(lambda: shipper.stats.bulk_failures >= 3)
        assert rig.counts()["shipped"] == 0
        rig.index.refuse = None
        await task
        return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.index.statuses == Counter({201: 30})
    assert shipper.stats.dead_lettered == 0


# -- bounds ------------------------------------------------------------------------------------


def test_batches_are_bounded_by_count(rig: Rig) -> None:
    expected = ids(95)
    added_and_drained(rig, expected, batch_docs=10)
    assert_all_shipped(rig, expected)
    sizes = rig.sizes()
    assert sizes and all(0 < n <= 10 for n in sizes)
    assert sum(sizes) == 95
    assert len(sizes) >= 10


def test_batches_are_bounded_by_bytes(rig: Rig) -> None:
    expected = ids(30)

    async def scenario() -> Shipper:
        await rig.add(expected)
        one = max(len(bulk.action(p, STREAM)) for p in rig.reader.pending(0, 100))
        shipper = rig.shipper(batch_bytes=int(one * 2.5))
        await shipper.drain()
        return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    bodies = [body for _items, body in rig.sink.calls]
    assert all(len(body) <= shipper.batch_bytes for body in bodies)
    assert all(len(body.splitlines()) == 4 for body in bodies[:-1])  # 2 actions each
    assert sorted(rig.sink.sent_ids()) == expected
    assert all(0 < n <= 2 for n in rig.sizes())


def test_a_document_over_the_byte_limit_goes_alone(rig: Rig) -> None:
    async def scenario() -> None:
        await rig.add(["small-1"])
        await rig.add(["huge"], note="x" * 5000)
        await rig.add(["small-2"])
        await rig.shipper(batch_bytes=2000).drain()

    run(scenario())
    assert_all_shipped(rig, ["small-1", "huge", "small-2"])
    assert [[p.event_id for p in items] for items, _body in rig.sink.calls] == [
        ["small-1"], ["huge"], ["small-2"]]


def test_requests_in_flight_are_bounded_by_the_concurrency(rig: Rig) -> None:
    expected = ids(60)

    async def scenario() -> None:
        await rig.add(expected)
        rig.sink.hold = asyncio.Event()
        task = asyncio.create_task(rig.shipper(batch_docs=10, concurrency=3).drain())
        await rig.sink.wait_calls(3)
        assert rig.sink.in_flight == 3
        assert rig.counts()["shipped"] == 0
        rig.sink.hold.set()
        await task

    run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.sink.peak_in_flight == 3
    assert len(rig.sink.calls) == 6


def test_leased_events_stay_bounded_while_retries_pile_up(rig: Rig) -> None:
    expected = ids(300)
    concurrency, batch_docs = 2, 20
    bound = concurrency * batch_docs * 2
    # Every item is refused twice first: without the bound, the events waiting for their
    # retry and the fresh ones leased beside them would grow to the whole backlog.
    rig.index.throttle = dict.fromkeys(expected, 2)
    added_and_drained(rig, expected, batch_docs=batch_docs, concurrency=concurrency,
                      backoff_initial=0.05, backoff_max=0.2)
    assert_all_shipped(rig, expected)
    samples = rig.index.outstanding
    assert len(samples) == len(rig.sink.calls) > 20
    assert max(samples) <= bound, max(samples)
    assert max(samples) > concurrency * batch_docs  # the samples did catch the piling up
    assert rig.index.statuses == Counter({429: 600, 201: 300})
    assert all(n <= batch_docs for n in rig.sizes())


# -- a crash and a restart ---------------------------------------------------------------------


@pytest.mark.parametrize("applied", [False, True], ids=["unanswered", "applied"])
def test_a_restarted_shipper_resends_what_was_in_flight(rig: Rig, applied: bool) -> None:
    """Cancelled with a request in flight (a crash): nothing was recorded as shipped, so the
    next shipper sends it again; had the cluster applied it, that re-send meets 409s."""
    expected = ids(10)

    async def scenario() -> Shipper:
        await rig.add(expected)
        rig.sink.hold = asyncio.Event()
        first = asyncio.create_task(rig.shipper().drain())
        await rig.sink.wait_calls(1)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert rig.counts()["pending"] == 10
        if applied:
            items, body = rig.sink.calls[0]
            rig.index(items, body)
        rig.sink.hold = None
        second = rig.shipper()
        await second.drain()
        return second

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.sink.sent_ids() == expected * 2
    assert (shipper.stats.indexed, shipper.stats.conflicts) == ((0, 10) if applied else (10, 0))


def test_requeued_shipped_rows_are_resent_as_conflicts(rig: Rig) -> None:
    expected = ids(8)

    def back_to_pending(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE events SET state = {PENDING}")

    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper()
        await shipper.drain()
        await rig.store.apply(back_to_pending)
        await shipper.drain()
        return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.index.statuses == Counter({201: 8, 409: 8})
    assert (shipper.stats.indexed, shipper.stats.conflicts) == (8, 8)


# -- dead letters: replay and purge ------------------------------------------------------------


def test_dlq_replay_after_the_reject_is_cleared(rig: Rig) -> None:
    expected = ids(10)
    bad = expected[4]
    rig.index.reject = {bad}

    async def scenario() -> Shipper:
        await rig.add(expected)
        shipper = rig.shipper()
        # The long-running shipper of `serve`: its cursor is past the event when it is
        # replayed, and it must go back for it.
        task = asyncio.create_task(shipper.run())
        try:
            await rig.settle(lambda: rig.counts()["shipped"] == 9)
            assert rig.counts() == {"pending": 0, "shipped": 9, "dead": 1, "quarantined": 0}
            assert [d["event_id"] for d in rig.reader.dead_letters()] == [bad]
            rig.index.reject = set()
            await rig.store.apply(requeue_dead(None))
            assert rig.reader.dead_letters() == []
            await rig.settle(lambda: rig.counts()["shipped"] == 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return shipper

    shipper = run(scenario())
    assert_all_shipped(rig, expected)
    assert rig.index.statuses[201] == 10
    assert shipper.stats.indexed == 10


def test_dlq_replay_of_one_seq_leaves_the_others_dead(rig: Rig) -> None:
    expected = ids(6)
    rig.index.reject = {expected[1], expected[3]}

    async def scenario() -> None:
        await rig.add(expected)
        seq = rig.seq_of(expected[3])
        shipper = rig.shipper()
        await shipper.drain()
        rig.index.reject = set()
        await rig.store.apply(requeue_dead([seq]))
        await shipper.drain()

    run(scenario())
    assert sorted(rig.index.docs) == sorted(set(expected) - {expected[1]})
    assert [d["event_id"] for d in rig.reader.dead_letters()] == [expected[1]]
    assert rig.counts() == {"pending": 0, "shipped": 5, "dead": 1, "quarantined": 0}


def test_dlq_replay_with_a_replacement_document(rig: Rig) -> None:
    rig.index.floats = {"latency_ms"}
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
        shipper = rig.shipper()
        await shipper.drain()
        [letter] = rig.reader.dead_letters()
        assert letter["event_id"] == "broken"
        assert letter["error_type"] == "document_parsing_exception"
        assert "failed to parse field [latency_ms] of type [float]" in letter["reason"]
        await rig.store.apply(requeue_dead([seq], doc=orjson.dumps(fixed)))
        await shipper.drain()

    run(scenario())
    assert_all_shipped(rig, ["broken", "fine"])
    stored = rig.index.docs["broken"]
    assert stored["latency_ms"] == 12.5
    assert stored["fixed_by"] == "operator"
    assert stored["event"]["original"] == raw.decode()  # the raw event is kept as received


def test_purge_dead_by_age_and_all(rig: Rig) -> None:
    rig.index.reject = {"old-0000", "new-0000"}

    async def scenario() -> None:
        shipper = rig.shipper()
        await rig.add(ids(3, "old"))
        shipper.clock = lambda: 1000.0
        await shipper.drain()
        await rig.add(ids(3, "new"))
        shipper.clock = lambda: 2000.0
        await shipper.drain()
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


def test_a_version_mismatch_stops_before_sending_anything(rig: Rig) -> None:
    """The mismatch's wording is Cluster.check_version's (tests/integration/
    test_elastic_http.py); the shipper stops on it and keeps everything pending."""
    mismatch = VersionMismatch("Elasticsearch at x is 8.15.0 but the client is 9.x")

    def version() -> str:
        raise mismatch

    rig.sink.version = version

    async def scenario() -> Shipper:
        await rig.add(ids(5))
        shipper = rig.shipper()
        with pytest.raises(VersionMismatch) as caught:
            await shipper.drain()
        assert caught.value is mismatch
        return shipper

    shipper = run(scenario())
    assert shipper.status == "stopped"
    assert shipper.last_error == mismatch.message
    assert rig.sink.version_checks == 1  # not retried
    assert rig.sink.calls == []
    assert rig.counts()["pending"] == 5


def test_a_one_shot_drain_gives_up_on_a_refusal_with_its_reason(rig: Rig) -> None:
    rig.index.refuse = answer_error("bulk request", 403, credentials=CREDENTIALS)

    async def scenario() -> RemoteRefused:
        await rig.add(ids(4))
        with pytest.raises(RemoteRefused) as caught:
            await rig.shipper().drain(give_up_on_refusal=True)
        return caught.value

    refused = run(scenario())
    assert refused.status == 403
    assert rig.counts()["pending"] == 4
    assert len(rig.sink.calls) == 1
