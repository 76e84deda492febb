"""The embedded SQLite store: grouped commits, dedup by event id, quarantine, pruning, reads."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import orjson
import pytest

from ingest.errors import StoreFull, StoreUnavailable
from ingest.receive.body import validate
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook
from ingest.records import Invalid, Row
from ingest.store import DB_NAME, Background, Budget, Reader, Retention, Store
from ingest.store.schema import SHIPPED
from ingest.testing import row as make_row

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
DAY_MS = 86_400_000


class Clock:
    def __init__(self, now: float = NOW_S) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(event_id: str, *, received_at: int = NOW_MS, ts: int | None = None,
        user: str | None = None, trace: str | None = None, error: str | None = None,
        model: str | None = "gpt-4o") -> Row:
    doc = {"id": event_id, "model": model, "user": user, "trace": trace, "error": error}
    return make_row(event_id, received_at=received_at, ts=received_at if ts is None else ts,
               model=model, status_code=200, latency_ms=12.5, user_id=user, trace_id=trace,
               error_message=error, prompt_tokens=10, completion_tokens=5, tokens_used=15,
               cost_usd=0.001, computed_cost_usd=0.001, doc=orjson.dumps(doc),
               raw=orjson.dumps({"id": event_id}))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["tail", "indexed"])
def store(tmp_path, clock, request):
    """Reads must not depend on whether the derived tables have caught up yet."""
    indexed = request.param == "indexed"
    # The indexer thread never runs on its own here: `write` catches up for "indexed".
    s = Store(tmp_path / "data", budget=Budget(min_free_bytes=0), clock=clock,
              background=Background(index_batch=10**9, index_delay_s=10**9))
    s.start()
    INDEXED[s] = indexed
    yield s
    s.close()


INDEXED: dict[Store, bool] = {}


def write(store: Store, rows=(), invalid=(), received_ms: int = NOW_MS,
          index: bool = True) -> list[bool]:
    written = asyncio.run(store.write(list(rows), list(invalid), received_ms))
    if index and INDEXED.get(store):
        store.catch_up()
    return written


def reader(store: Store) -> Reader:
    return Reader(store.path.parent)


# writing and dedup ---------------------------------------------------------------------------


def test_write_reports_new_and_duplicate_per_row(store):
    assert write(store, [row("a"), row("b")]) == [True, True]
    assert write(store, [row("a"), row("c"), row("b")]) == [False, True, False]
    assert write(store, [row("d"), row("d"), row("e"), row("d")]) == [True, False, True, False]
    assert write(store) == []
    r = reader(store)
    try:
        assert r.counts() == {"pending": 5, "shipped": 0, "dead": 0, "quarantined": 0}
    finally:
        r.close()


def test_duplicate_keeps_the_first_document(store):
    first = row("a", user="first")
    second = row("a", user="second")
    assert write(store, [first]) == [True]
    assert write(store, [second]) == [False]
    r = reader(store)
    try:
        found = r.search(event_id="a")
    finally:
        r.close()
    assert [d["user"] for d in found] == ["first"]


def test_enriched_rows_are_stored_as_documents(store):
    enricher = Enricher.default(PriceBook(lookup=None))
    event = validate({"id": "req_9", "model": "m", "status_code": 500, "error": "upstream down",
                      "user_metadata": {"user_id": "u1", "trace_id": "t1"},
                      "timestamp": NOW_MS - 5})
    assert write(store, [enricher.row(event, b'{"raw":true}', NOW_MS)]) == [True]
    r = reader(store)
    try:
        (doc,) = r.search(trace="t1")
    finally:
        r.close()
    assert doc["id"] == "req_9"
    assert doc["tags"] == ["error"]
    assert doc["_state"] == "pending"
    assert doc["timestamp_source"] == "event"


def test_dedup_survives_a_restart(tmp_path):
    first = Store(tmp_path, budget=Budget(min_free_bytes=0))
    first.start()
    try:
        assert write(first, [row("a")]) == [True]
    finally:
        first.close()
    again = Store(tmp_path, budget=Budget(min_free_bytes=0))
    again.start()
    try:
        assert write(again, [row("a"), row("b")]) == [False, True]
    finally:
        again.close()


def test_quarantine_dedups_by_content(store):
    bad = Invalid(b'{"status_code": 900}', "status_code: too big")
    write(store, [], [bad, Invalid(bad.raw, "same bytes, other reason")], NOW_MS)
    write(store, [row("ok")], [bad], NOW_MS + 1)
    write(store, [], [Invalid(b"[1]", "event must be a JSON object")], NOW_MS + 2)
    r = reader(store)
    try:
        assert r.counts() == {"pending": 1, "shipped": 0, "dead": 0, "quarantined": 2}
        items = r.quarantined()
    finally:
        r.close()
    assert [(i["raw"], i["reason"], i["received_at"]) for i in items] == [
        ("[1]", "event must be a JSON object", NOW_MS + 2),
        ('{"status_code": 900}', "status_code: too big", NOW_MS),
    ]


# reading -------------------------------------------------------------------------------------


@pytest.fixture(params=[False, True])
def filled(store, request):
    rows = [
        row("r1", ts=NOW_MS - 3000, user="alice", trace="t-1", error="Rate limit exceeded"),
        row("r2", ts=NOW_MS - 2000, user="bob", trace="t-2", error="100% of quota used"),
        row("r3", ts=NOW_MS - 1000, user="alice", trace="t-3", error="1000 tokens over"),
        row("r4", ts=NOW_MS, user="alice", trace="t-1", error="rate_limit hit"),
        row("r5", ts=NOW_MS + 1000, user="carol", error="path C:\\tmp\\x"),
        row("r6", ts=NOW_MS + 2000, user="dave"),
    ]
    if request.param:  # written in the other order: answers follow event time, not arrival
        rows.reverse()
    write(store, rows[:3])
    write(store, rows[3:], index=False)  # the rest stays in the tail
    r = reader(store)
    yield r
    r.close()


def ids(found):
    return [d["id"] for d in found]


def test_search_by_id(filled):
    assert ids(filled.search(event_id="r3")) == ["r3"]
    assert filled.search(event_id="r") == []


def test_search_by_user_newest_first(filled):
    assert ids(filled.search(user="alice")) == ["r4", "r3", "r1"]
    assert ids(filled.search(user="alice", limit=2)) == ["r4", "r3"]
    assert filled.search(user="ALICE") == []


def test_search_by_trace(filled):
    assert ids(filled.search(trace="t-1")) == ["r4", "r1"]


def test_search_filters_combine(filled):
    assert ids(filled.search(user="alice", trace="t-1", text="rate")) == ["r4", "r1"]
    assert ids(filled.search(user="bob", trace="t-1")) == []


def test_search_text_is_case_insensitive_substring(filled):
    assert ids(filled.search(text="RATE")) == ["r4", "r1"]
    assert ids(filled.search(text="limit")) == ["r4", "r1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("0%", ["r2"]),              # unescaped, "%0%%" would also match "1000 tokens"
    ("%", ["r2"]),
    ("e_l", ["r4"]),             # unescaped, "_" would match the space in "Rate limit"
    ("_", ["r4"]),
    ("C:\\tmp", ["r5"]),
    ("\\", ["r5"]),
])
def test_search_text_escapes_like_wildcards(filled, text, expected):
    assert ids(filled.search(text=text)) == expected


def test_search_text_folds_case_beyond_ascii(store):
    write(store, [row("fr", error="ÉCHEC du modèle"), row("de", error="Straße gesperrt"),
                  row("en", error="plain failure")])
    r = reader(store)
    try:
        assert ids(r.search(text="échec")) == ["fr"]
        assert ids(r.search(text="STRASSE")) == ["de"]
        assert ids(r.search(text="MODÈLE")) == ["fr"]
    finally:
        r.close()


def test_search_without_filters_lists_newest(filled):
    assert ids(filled.search(limit=3)) == ["r6", "r5", "r4"]
    assert all(d["_state"] == "pending" for d in filled.search())


def test_reader_without_a_store(tmp_path):
    with pytest.raises(StoreUnavailable, match="no store"):
        Reader(tmp_path)


# pruning -------------------------------------------------------------------------------------


def test_prune_removes_only_rows_older_than_retention(tmp_path, clock):
    retention = 30 * DAY_MS
    store = Store(tmp_path, budget=Budget(min_free_bytes=0), retention=Retention(retention),
                  clock=clock)
    store.start()
    try:
        # Written while the clock says NOW, so nothing is old yet.
        write(store, [row("old", received_at=NOW_MS - 1),
                      row("edge", received_at=NOW_MS),
                      row("new", received_at=NOW_MS + DAY_MS)],
              [Invalid(b"old-bad", "x")], NOW_MS - 1)
        write(store, [], [Invalid(b"edge-bad", "x")], NOW_MS)
        assert store.prune() is False
        r = reader(store)
        try:
            assert r.counts() == {"pending": 3, "shipped": 0, "dead": 0, "quarantined": 2}
        finally:
            r.close()
        # Thirty days later: the cutoff is exactly NOW_MS, so only strictly older rows go.
        clock.now = NOW_S + retention / 1000
        assert store.prune() is False  # False: nothing old is left over for a later call
        r = reader(store)
        try:
            assert ids(r.search()) == ["new", "edge"]
            assert [q["raw"] for q in r.quarantined()] == ["edge-bad"]
            assert r.counts() == {"pending": 2, "shipped": 0, "dead": 0, "quarantined": 1}
        finally:
            r.close()
    finally:
        store.close()


def test_prune_in_bounded_steps(tmp_path, clock):
    store = Store(tmp_path, budget=Budget(min_free_bytes=0), retention=Retention(DAY_MS),
                  clock=clock)
    store.start()
    try:
        old = [row(f"old{i}", received_at=NOW_MS - 2 * DAY_MS) for i in range(2500)]
        write(store, [*old, row("new")])
        assert store.prune(max_chunks=1) is True  # more old rows remain after one chunk
        r = reader(store)
        try:
            assert r.counts()["pending"] == 501
            assert store.prune() is False
            assert ids(r.search()) == ["new"]
        finally:
            r.close()
    finally:
        store.close()


def test_prune_is_not_pinned_by_old_pending_rows(tmp_path, clock):
    """With a sink down, unshipped rows stay; the shipped ones behind them still expire."""
    store = Store(tmp_path, budget=Budget(min_free_bytes=0), clock=clock,
                  retention=Retention(DAY_MS, keep_pending=True))
    store.start()
    try:
        old = NOW_MS - 2 * DAY_MS
        # More unshipped rows at the front than one prune chunk looks at.
        write(store, [row(f"unshipped{i}", received_at=old) for i in range(2500)])
        write(store, [row(f"shipped{i}", received_at=old) for i in range(3000)])
        write(store, [row("recent-shipped"), row("recent")])
        asyncio.run(store.apply(lambda conn: conn.execute(
            f"UPDATE events SET state = {SHIPPED} WHERE event_id LIKE 'shipped%' "
            "OR event_id = 'recent-shipped'")))
        while store.prune(max_chunks=1):
            pass
        r = reader(store)
        try:
            assert r.counts() == {"pending": 2501, "shipped": 1, "dead": 0, "quarantined": 0}
            assert r.search(event_id="shipped0") == []
            assert ids(r.search(event_id="unshipped0")) == ["unshipped0"]
        finally:
            r.close()
    finally:
        store.close()


def test_a_store_from_before_the_retention_index_gets_it_once(tmp_path, caplog):
    store = Store(tmp_path, budget=Budget(min_free_bytes=0))
    store.start()
    write(store, [row("a")])
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("DROP INDEX events_settled")
    for opening in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ingest.store"):
            store = Store(tmp_path, budget=Budget(min_free_bytes=0))
            store.start()
            store.close()
        said = [r.getMessage() for r in caplog.records if "for retention" in r.getMessage()]
        assert len(said) == (1 if opening == 0 else 0)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master "
                            "WHERE name = 'events_settled'").fetchone() == (1,)


def test_prune_with_nothing_old_removes_nothing(store):
    write(store, [row("a"), row("b")])
    assert store.prune() is False
    r = reader(store)
    try:
        assert r.counts()["pending"] == 2
    finally:
        r.close()


# full and stopped ----------------------------------------------------------------------------


def test_tiny_max_bytes_marks_the_store_full(tmp_path):
    store = Store(tmp_path, budget=Budget(max_bytes=1, min_free_bytes=0))
    store.start()
    try:
        assert store.full_reason is not None and "over its 1 limit" in store.full_reason
        with pytest.raises(StoreFull):
            store.refuse_if_full()
        with pytest.raises(StoreFull):
            write(store, [row("a")])
    finally:
        store.close()
    assert (tmp_path / DB_NAME).exists()


def test_low_disk_marks_the_store_full(tmp_path):
    store = Store(tmp_path, budget=Budget(min_free_bytes=1 << 62))
    store.start()
    try:
        assert store.full_reason is not None and "free" in store.full_reason
        with pytest.raises(StoreFull) as info:
            store.refuse_if_full()
        assert info.value.message == store.full_reason
    finally:
        store.close()


def test_room_means_not_full(store):
    assert store.full_reason is None
    store.refuse_if_full()
    asyncio.run(store.probe())


def test_restarting_a_current_store_writes_nothing(tmp_path):
    # A full disk refuses any write, even one that sets the schema version to what it was.
    first = Store(tmp_path, budget=Budget(min_free_bytes=0))
    first.start()
    write(first, [row("a")])
    first.close()
    before = (tmp_path / DB_NAME).read_bytes()
    again = Store(tmp_path, budget=Budget(min_free_bytes=0))
    again.start()
    try:
        assert (tmp_path / f"{DB_NAME}-wal").stat().st_size == 0
        assert (tmp_path / DB_NAME).read_bytes() == before
    finally:
        again.close()


class Disk:
    """What the store is told is free on its disk (the files themselves are real)."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, folder) -> int:
        return self.free


async def until(check, seconds: float, what: str) -> None:
    """Poll `check` on the loop (the store's timer runs meanwhile) until it holds."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def crashed_writer(tmp_path, count: int) -> Store:
    """A writer that committed `count` events into its WAL and never checkpointed them:
    as a receiver that died, seen by the next one opened beside it."""
    store = Store(tmp_path, budget=Budget(min_free_bytes=0),
                  background=Background(checkpoint_every_s=3600, index_delay_s=3600))
    store.start()
    write(store, [row(f"e{i}") for i in range(count)])
    return store


def test_a_wal_the_disk_could_not_checkpoint_refuses_writes(tmp_path):
    dead = crashed_writer(tmp_path, 3000)
    try:
        probe = Store(tmp_path, budget=Budget(min_free_bytes=0), disk_free=Disk(1 << 40))
        probe.start()
        need = probe.space.checkpoint
        probe.close()
        assert need > 500_000  # the events are in the WAL only
        for free, refused in ((need - 1, True), (need, False)):
            store = Store(tmp_path, budget=Budget(min_free_bytes=0), disk_free=Disk(free))
            store.start()
            try:
                assert (store.full_reason is not None) is refused, store.full_reason
                if refused:
                    assert f"{need} to checkpoint the WAL" in store.full_reason
                    with pytest.raises(StoreFull):
                        store.refuse_if_full()
            finally:
                store.close()
    finally:
        dead.close()


def test_a_store_short_of_disk_checkpoints_its_wal_and_resumes(tmp_path, caplog):
    dead = crashed_writer(tmp_path, 3000)
    disk = Disk(0)
    wal = tmp_path / f"{DB_NAME}-wal"

    async def main() -> None:
        store = Store(tmp_path, budget=Budget(min_free_bytes=0), housekeeping_s=0.05,
                      disk_free=disk)
        store.start()
        try:
            assert store.full_reason is not None and "to checkpoint the WAL" in store.full_reason
            with pytest.raises(StoreFull):
                await store.write([row("late")])
            # The housekeeping rounds copy the WAL into the database and truncate it...
            await until(lambda: wal.stat().st_size == 0, 10, "the WAL truncated")
            # ... and with nothing free at all, the store still waits.
            await until(lambda: store.space.checkpoint == 0, 5, "a measurement after it")
            assert store.full_reason == ("only 0 bytes free on the store's disk, under the 0 "
                                         "minimum")
            with pytest.raises(StoreFull):
                await store.write([row("late")])
            disk.free = 1 << 30
            await until(lambda: store.full_reason is None, 5, "writes taken again")
            assert await store.write([row("late"), row("e1")]) == [True, False]
        finally:
            store.close()

    with caplog.at_level(logging.INFO, logger="ingest.store"):
        asyncio.run(main())
    dead.close()
    said = [r.getMessage() for r in caplog.records]
    assert any("waiting for room on the disk" in m for m in said)
    assert any("gave its" in m for m in said)
    assert "the store takes writes again" in said
    with Reader(tmp_path) as r:
        assert r.counts()["pending"] == 3001


def test_a_commit_that_finds_the_disk_full_is_refused_and_the_store_resumes(tmp_path):
    async def main() -> None:
        store = Store(tmp_path, budget=Budget(min_free_bytes=0), housekeeping_s=0.05)
        store.start()
        try:
            await store.write([row("before")])
            # SQLite's own "database or disk is full", as ENOSPC gives it: no page past here.
            await store.apply(lambda conn: conn.execute("PRAGMA max_page_count = 1"))
            with pytest.raises(StoreFull, match="the disk under the store is full"):
                await store.write([row(f"big{i}") for i in range(2000)])
            assert store.full_reason == "the disk under the store is full"
            with pytest.raises(StoreFull):
                await store.write([row("next")])
            with Reader(tmp_path) as r:
                assert r.search(event_id="big0") == []  # refused means not stored
            await store.apply(lambda conn: conn.execute("PRAGMA max_page_count = 1000000000"))
            await until(lambda: store.full_reason is None, 5, "writes taken again")
            flags = await store.write([row(f"big{i}") for i in range(2000)])
            assert flags == [True] * 2000
        finally:
            store.close()

    asyncio.run(main())
    with Reader(tmp_path) as r:
        assert r.counts()["pending"] == 2001


def test_a_disk_too_full_to_open_the_store_on_is_waited_for(tmp_path, monkeypatch):
    from ingest.store import opening

    conn = sqlite3.connect(tmp_path / "probe.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 2")
    try:
        conn.execute("INSERT INTO t VALUES (?)", (bytes(100_000),))
    except sqlite3.OperationalError as exc:
        full = exc  # a real SQLITE_FULL, for the first attempt to open
    conn.close()
    real = opening.open_writer
    attempts: list[int] = []

    def open_writer(path, wal_limit):
        attempts.append(1)
        if len(attempts) == 1:
            raise full
        return real(path, wal_limit)

    monkeypatch.setattr(opening, "open_writer", open_writer)

    async def main() -> None:
        store = Store(tmp_path / "data", budget=Budget(min_free_bytes=0), housekeeping_s=0.05)
        store.start()
        try:
            assert not store.running
            with pytest.raises(StoreFull, match="too full to open it"):
                await store.probe()
            await until(lambda: store.running, 5, "the store opened")
            assert await store.write([row("a")]) == [True]
        finally:
            store.close()

    asyncio.run(main())
    assert len(attempts) == 2


def test_writes_after_close_are_refused(tmp_path):
    store = Store(tmp_path, budget=Budget(min_free_bytes=0))
    store.start()
    assert store.running
    store.close()
    assert not store.running
    with pytest.raises(StoreUnavailable):
        write(store, [row("late")])
    with pytest.raises(StoreUnavailable):
        store.refuse_if_full()


def test_writes_before_start_are_refused(tmp_path):
    with pytest.raises(StoreUnavailable):
        write(Store(tmp_path, budget=Budget(min_free_bytes=0)), [row("early")])


def test_start_on_an_unusable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        Store(blocker / "data", budget=Budget(min_free_bytes=0)).start()


def test_close_finishes_queued_writes(tmp_path):
    store = Store(tmp_path, budget=Budget(min_free_bytes=0))
    store.start()

    async def close() -> None:
        store.close()  # on the loop that wrote, as the app's lifespan does

    async def main() -> list[list[bool] | None]:
        # gather starts its tasks in order: every write has queued its job before close runs.
        return await asyncio.gather(*(store.write([row(f"e{i}")]) for i in range(50)), close())

    assert asyncio.run(main()) == [[True]] * 50 + [None]
    r = Reader(tmp_path)
    try:
        assert r.counts()["pending"] == 50
    finally:
        r.close()


# concurrency ---------------------------------------------------------------------------------


def test_many_concurrent_writers_get_the_right_answers(store):
    batches = [[row(f"id-{(w * 7 + k) % 60}") for k in range(5)] for w in range(120)]

    async def main() -> list[list[bool]]:
        return await asyncio.gather(*(store.write(b) for b in batches))

    results = asyncio.run(main())
    # Jobs are committed in the order they were queued, which is the order of the gather.
    seen: set[str] = set()
    for batch, flags in zip(batches, results, strict=True):
        expected = []
        for r in batch:
            expected.append(r.event_id not in seen)
            seen.add(r.event_id)
        assert flags == expected
    assert sum(sum(flags) for flags in results) == 60
    r = reader(store)
    try:
        assert r.counts()["pending"] == 60
    finally:
        r.close()


def test_one_bad_job_does_not_fail_its_neighbours(store):
    bad = row("bad")._replace(model={"not": "bindable"})

    async def main():
        return await asyncio.gather(store.write([row("g1")]), store.write([bad]),
                                    store.write([row("g2")]), return_exceptions=True)

    good1, failed, good2 = asyncio.run(main())
    assert good1 == [True]
    assert good2 == [True]
    assert isinstance(failed, StoreUnavailable)
    # The writer is still fine afterwards.
    assert write(store, [row("g3"), row("g1")]) == [True, False]


def test_a_row_is_inserted_in_the_events_table_column_order():
    from ingest.store.schema import EVENT_COLUMNS

    assert Row._fields == EVENT_COLUMNS
