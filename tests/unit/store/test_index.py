"""The derived tables: their own file, filled on their own thread, emptied with their events."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import orjson
import pytest
from receiver import wait_until

from ingest.errors import StoreUnavailable
from ingest.records import Query, Row
from ingest.store import (
    DB_NAME,
    DEAD,
    Background,
    Budget,
    Reader,
    Retention,
    Store,
    index,
    purge_dead,
)
from ingest.store.index import watermarks
from ingest.store.schema import INDEX_NAME
from ingest.testing import row as make_row

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000


def row(n: int, *, received_at: int = NOW_MS, user: str | None = "u", trace: str | None = "t",
        error: str | None = None) -> Row:
    event_id = f"e{n}"
    doc = orjson.dumps({"id": event_id, "user": user})
    return make_row(event_id, received_at=received_at, ts=received_at + n, model="gpt-4o",
               status_code=500 if error else 200, latency_ms=10.0 + n, user_id=user,
               trace_id=trace, error_message=error, prompt_tokens=1, completion_tokens=2,
               tokens_used=3, cost_usd=0.5, computed_cost_usd=0.5, doc=doc)


def open_store(path: Path, **kw: object) -> Store:
    store = Store(path, budget=Budget(min_free_bytes=0), **kw)  # type: ignore[arg-type]
    store.start()
    return store


def derived_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path / INDEX_NAME) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("facts", "by_user", "by_trace")}


def marks(path: Path) -> dict[str, int]:
    with sqlite3.connect(path / INDEX_NAME) as conn:
        return watermarks(conn)


def mark(path: Path) -> int:
    """How far all three derived tables have got."""
    return min(marks(path).values())


def forgotten(path: Path) -> int:
    with sqlite3.connect(path / DB_NAME) as conn:
        return conn.execute("SELECT count(*) FROM forgotten").fetchone()[0]


QUIET = Background(index_batch=10**9, index_delay_s=10**9)  # the thread only runs when asked


def test_events_wait_in_the_tail_until_a_batch_is_due(tmp_path: Path) -> None:
    store = open_store(tmp_path, background=Background(index_batch=5, index_delay_s=10**9))
    try:
        asyncio.run(store.write([row(n) for n in range(4)]))
        with Reader(tmp_path) as reader:
            assert reader.unindexed() == 4
            assert len(reader.search(user="u", limit=100)) == 4  # from the tail
        assert mark(tmp_path) == 0
        asyncio.run(store.write([row(n) for n in range(4, 10)]))  # 10 waiting >= 5
        wait_until(lambda: mark(tmp_path) == 10, 10, "the indexer thread")
        assert marks(tmp_path) == {"facts": 10, "by_user": 10, "by_trace": 10}
        assert derived_counts(tmp_path) == {"facts": 10, "by_user": 10, "by_trace": 10}
        with Reader(tmp_path) as reader:
            assert reader.unindexed() == 0
            assert len(reader.search(user="u", limit=100)) == 10
        with sqlite3.connect(tmp_path / INDEX_NAME) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"facts", "by_user", "by_trace", "meta"}.isdisjoint(names)
    finally:
        store.close()


def test_the_tables_are_filled_off_the_writers_thread_at_a_lower_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lowered: list[int] = []
    monkeypatch.setattr(index, "background_priority",
                        lambda: lowered.append(threading.get_ident()))
    store = open_store(tmp_path, background=Background(index_batch=1, index_delay_s=10**9))
    try:
        asyncio.run(store.write([row(1)]))
        wait_until(lambda: mark(tmp_path) == 1, 10, "the indexer thread")
    finally:
        store.close()
    assert len(lowered) == 1 and lowered[0] != threading.get_ident()


def test_a_quiet_store_indexes_what_waits_after_the_delay(tmp_path: Path) -> None:
    store = open_store(tmp_path, background=Background(index_batch=10**9, index_delay_s=0.05))
    try:
        asyncio.run(store.write([row(1), row(2)]))
        wait_until(lambda: mark(tmp_path) == 2, 10, "the indexer's timer")
    finally:
        store.close()


def test_catch_up_fills_every_table_in_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "STEP", 7)
    store = open_store(tmp_path, background=QUIET)
    try:
        asyncio.run(store.write([row(n) for n in range(30)]))
        assert mark(tmp_path) == 0
        store.catch_up()
        assert derived_counts(tmp_path) == {"facts": 30, "by_user": 30, "by_trace": 30}
        with Reader(tmp_path) as reader:
            assert reader.unindexed() == 0
    finally:
        store.close()


def test_pruning_takes_the_derived_rows_with_the_events(tmp_path: Path) -> None:
    now = [NOW_MS / 1000]
    store = open_store(tmp_path, retention=Retention(DAY_MS), clock=lambda: now[0],
                       background=QUIET)
    try:
        asyncio.run(store.write([row(1, received_at=NOW_MS - 2 * DAY_MS, error="old"),
                                 row(2, user="v", trace="s", error="new")]))
        store.catch_up()
        assert derived_counts(tmp_path) == {"facts": 2, "by_user": 2, "by_trace": 2}
        assert store.prune() is False
        with Reader(tmp_path) as reader:  # gone at once: searches join the events
            assert reader.search(user="u") == []
        assert forgotten(tmp_path) == 1
        store.catch_up()
        assert derived_counts(tmp_path) == {"facts": 1, "by_user": 1, "by_trace": 1}
        with Reader(tmp_path) as reader:
            window = Query(0, NOW_MS + DAY_MS)
            assert [r[0] for r in reader.error_counts(window)] == ["gpt-4o"]
            assert reader.error_counts(window)[0][1] == 1
        store.prune()  # the keys the indexer has applied are dropped
        assert forgotten(tmp_path) == 0
    finally:
        store.close()


def test_keys_forgotten_before_a_stop_are_applied_after_the_restart(tmp_path: Path) -> None:
    now = [NOW_MS / 1000]
    store = open_store(tmp_path, retention=Retention(DAY_MS), clock=lambda: now[0],
                       background=QUIET)
    asyncio.run(store.write([row(1, received_at=NOW_MS - 2 * DAY_MS), row(2)]))
    store.catch_up()
    store.prune()
    store.close()  # the indexer never saw the deletion
    assert derived_counts(tmp_path) == {"facts": 2, "by_user": 2, "by_trace": 2}
    again = open_store(tmp_path, background=QUIET)
    try:
        again.catch_up()
        assert derived_counts(tmp_path) == {"facts": 1, "by_user": 1, "by_trace": 1}
    finally:
        again.close()


def test_purging_the_newest_dead_letters_lets_new_events_be_indexed(tmp_path: Path) -> None:
    store = open_store(tmp_path, background=QUIET)

    def mark_dead(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE events SET state = {DEAD} WHERE seq >= 2")
        conn.execute("INSERT INTO dead_letters SELECT seq, event_id, 0, 400, 'x', 'y', 'z' "
                     "FROM events WHERE seq >= 2")

    async def run() -> None:
        await store.write([row(1), row(2), row(3)])
        store.catch_up()
        await store.apply(mark_dead)
        await store.apply(purge_dead(None))
        # Sequence numbers 2 and 3 will be handed out again: written before the indexer
        # looks, the new event must still be indexed.
        await store.write([row(4, user="w")])

    try:
        asyncio.run(run())
        assert mark(tmp_path) == 3
        store.catch_up()
        assert mark(tmp_path) == 2
        assert derived_counts(tmp_path) == {"facts": 2, "by_user": 2, "by_trace": 2}
        with Reader(tmp_path) as reader:
            assert [d["id"] for d in reader.search(user="w")] == ["e4"]
            assert [d["id"] for d in reader.search(trace="t")] == ["e4", "e1"]
    finally:
        store.close()


def test_a_store_no_receiver_of_this_release_opened_reads_as_all_tail(tmp_path: Path) -> None:
    store = open_store(tmp_path, background=QUIET)
    asyncio.run(store.write([row(1), row(2, user="v")]))
    store.close()
    (tmp_path / INDEX_NAME).unlink()
    with Reader(tmp_path) as reader:
        assert [d["id"] for d in reader.search(user="v")] == ["e2"]
        assert reader.unindexed() == 2


V1_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, received_at INTEGER NOT
    NULL, ts INTEGER NOT NULL, model TEXT, status_code INTEGER, latency_ms REAL, user_id TEXT,
    trace_id TEXT, error_message TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    tokens_used INTEGER, cost_usd REAL, computed_cost_usd REAL, doc BLOB NOT NULL,
    raw BLOB NOT NULL, state INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX events_event_id ON events(event_id);
CREATE INDEX events_user ON events(user_id, ts) WHERE user_id IS NOT NULL;
CREATE INDEX events_trace ON events(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX events_pending ON events(seq) WHERE state = 0;
CREATE INDEX events_report ON events(ts, model, status_code, latency_ms, user_id,
    cost_usd, computed_cost_usd, prompt_tokens, completion_tokens, tokens_used);
CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, failed_at INTEGER
    NOT NULL, status INTEGER NOT NULL, error_type TEXT NOT NULL, reason TEXT NOT NULL,
    target TEXT NOT NULL);
CREATE TABLE quarantine (id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL, reason TEXT NOT
    NULL, digest TEXT NOT NULL UNIQUE, raw BLOB NOT NULL);
PRAGMA user_version = 1;
"""


V2_DERIVED = """
CREATE TABLE facts (ts INTEGER NOT NULL, seq INTEGER NOT NULL, model TEXT,
    PRIMARY KEY (ts, seq)) WITHOUT ROWID;
CREATE TABLE by_user (user_id TEXT NOT NULL, ts INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, ts, seq)) WITHOUT ROWID;
CREATE TABLE by_trace (trace_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (trace_id, seq)) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('facts', 3), ('by_user', 3), ('by_trace', 3);
DROP INDEX events_user;
DROP INDEX events_trace;
DROP INDEX events_report;
PRAGMA user_version = 2;
"""


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_store_is_upgraded_and_indexed(tmp_path: Path, version: int) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.executescript(V1_SCHEMA)
        conn.executemany(f"INSERT INTO events VALUES (NULL{', ?' * 16}, 0)",
                         [tuple(row(n, user=f"u{n % 2}")) for n in range(10)])
        if version == 2:
            conn.executescript(V2_DERIVED)
    store = open_store(tmp_path, background=QUIET)
    try:
        with Reader(tmp_path) as reader:  # before indexing: all of it is tail
            assert len(reader.search(user="u1", limit=100)) == 5
        asyncio.run(store.write([row(10, user="u1")]))
        store.catch_up()
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert {"events_user", "events_trace", "events_report", "facts", "by_user", "by_trace",
                "meta"}.isdisjoint(names)
        assert "events_settled" in names  # what retention with a sink walks
        assert marks(tmp_path) == {"facts": 11, "by_user": 11, "by_trace": 11}
        assert derived_counts(tmp_path) == {"facts": 11, "by_user": 11, "by_trace": 11}
        with Reader(tmp_path) as reader:
            assert len(reader.search(user="u1", limit=100)) == 6
    finally:
        store.close()


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreUnavailable, match="schema version 99"):
        Store(tmp_path).start()


def test_a_damaged_index_file_is_set_aside_and_filled_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(tmp_path, background=QUIET)
    asyncio.run(store.write([row(1), row(2, user="v")]))
    store.catch_up()
    store.close()
    for name in (INDEX_NAME, f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / INDEX_NAME).write_bytes(b"not a database at all, " * 200)
    again = open_store(tmp_path, background=QUIET)  # starts all the same
    try:
        assert [p.name for p in tmp_path.glob(f"{INDEX_NAME}.broken-*")] != []
        assert "is damaged" in caplog.text
        again.catch_up()
        assert derived_counts(tmp_path) == {"facts": 2, "by_user": 2, "by_trace": 2}
        with Reader(tmp_path) as reader:
            assert [d["id"] for d in reader.search(user="v")] == ["e2"]
    finally:
        again.close()
