"""The derived tables: filled behind the ack path, emptied with their events, upgraded from v1."""

from __future__ import annotations

import asyncio
import sqlite3
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from ingest.enrich import Row
from ingest.errors import StoreUnavailable
from ingest.reports import Query
from ingest.store import DB_NAME, DEAD, Reader, Store, index, purge_dead
from ingest.store.index import watermarks

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000


def row(n: int, *, received_at: int = NOW_MS, user: str | None = "u", trace: str | None = "t",
        error: str | None = None) -> Row:
    event_id = f"e{n}"
    doc = orjson.dumps({"id": event_id, "user": user})
    return Row(event_id, received_at, received_at + n, "gpt-4o", 500 if error else 200, 10.0 + n,
               user, trace, error, 1, 2, 3, 0.5, 0.5, doc, doc)


def open_store(path: Path, **kw: object) -> Store:
    store = Store(path, min_free_bytes=0, **kw)  # type: ignore[arg-type]
    store.start()
    return store


def derived_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path / DB_NAME) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("facts", "by_user", "by_trace")}


def mark(path: Path) -> int:
    """How far all three derived tables have got."""
    with sqlite3.connect(path / DB_NAME) as conn:
        return min(watermarks(conn).values())


def test_events_wait_in_the_tail_until_a_batch_is_due(tmp_path: Path) -> None:
    store = open_store(tmp_path, index_batch=5, index_delay_s=10**9)

    def marks() -> dict[str, int]:
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            return watermarks(conn)

    async def run() -> None:
        await store.write([row(n) for n in range(4)])
        assert mark(tmp_path) == 0
        with Reader(tmp_path) as reader:
            assert reader.unindexed() == 4
        await store.write([row(n) for n in range(4, 10)])
        # 10 waiting >= 5: the group that made it 10 fills one table with one batch, and
        # timers carry the other tables and the next batch.
        for _ in range(500):
            if mark(tmp_path) == 10:
                break
            await asyncio.sleep(0.01)  # the store's own timer carries the rest; bounded

    try:
        asyncio.run(run())
        assert marks() == {"facts": 10, "by_user": 10, "by_trace": 10}
        assert derived_counts(tmp_path) == {"facts": 10, "by_user": 10, "by_trace": 10}
        with Reader(tmp_path) as reader:
            assert reader.unindexed() == 0
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    finally:
        store.close()


def test_a_step_fills_one_table_and_the_rest_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[tuple[str, int, int]] = []
    fill = index.fill

    def spy(conn: sqlite3.Connection, table: str, after: int, through: int) -> None:
        steps.append((table, after, through))
        fill(conn, table, after, through)

    monkeypatch.setattr(index, "fill", spy)
    store = open_store(tmp_path, index_batch=10, index_delay_s=10**9)

    async def run() -> None:
        await store.write([row(n) for n in range(100)])
        # The remainder is carried by a timer, not by further writes.
        for _ in range(500):
            if mark(tmp_path) == 100:
                break
            await asyncio.sleep(0.01)  # the loop must run for the timer to fire; bounded

    try:
        asyncio.run(run())
    finally:
        store.close()
    # The group of 100 made the first step 3 x 100, capped at four batches; the timer's
    # steps carry one batch each; every table ends complete, each range after the last.
    assert steps[0] == ("facts", 0, 40)
    assert all(b - a <= 10 for _, a, b in steps[1:])
    for table in ("facts", "by_user", "by_trace"):
        ranges = [(a, b) for t, a, b in steps if t == table]
        assert ranges[0][0] == 0 and ranges[-1][1] == 100
        assert all(prev[1] == nxt[0] for prev, nxt in pairwise(ranges))


def test_once_the_delay_passed_what_waits_goes_into_every_table_at_once(
        tmp_path: Path) -> None:
    store = open_store(tmp_path, index_batch=100, index_delay_s=0)
    try:
        asyncio.run(store.write([row(n) for n in range(7)]))
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            assert watermarks(conn) == {"facts": 7, "by_user": 7, "by_trace": 7}
    finally:
        store.close()


def test_a_quiet_store_indexes_what_waits_after_the_delay(tmp_path: Path) -> None:
    store = open_store(tmp_path, index_batch=10**9, index_delay_s=0.05)

    async def run() -> int:
        await store.write([row(1), row(2)])
        for _ in range(500):
            if mark(tmp_path) == 2:
                break
            await asyncio.sleep(0.01)  # waiting for the store's own timer; bounded
        return mark(tmp_path)

    try:
        assert asyncio.run(run()) == 2
    finally:
        store.close()


def test_pruning_takes_the_derived_rows_with_the_events(tmp_path: Path) -> None:
    now = [NOW_MS / 1000]
    store = open_store(tmp_path, index_batch=1, index_delay_s=0, retention_ms=DAY_MS,
                       clock=lambda: now[0])
    try:
        asyncio.run(store.write([row(1, received_at=NOW_MS - 2 * DAY_MS, error="old"),
                                 row(2, user="v", trace="s", error="new")]))
        assert derived_counts(tmp_path) == {"facts": 2, "by_user": 2, "by_trace": 2}
        assert store.prune() is False
        assert derived_counts(tmp_path) == {"facts": 1, "by_user": 1, "by_trace": 1}
        with Reader(tmp_path) as reader:
            window = Query(0, NOW_MS + DAY_MS)
            assert [r[0] for r in reader.error_counts(window)] == ["gpt-4o"]
            assert reader.error_counts(window)[0][1] == 1
            assert reader.search(user="u") == []
    finally:
        store.close()


def test_purging_the_newest_dead_letters_lets_new_events_be_indexed(tmp_path: Path) -> None:
    store = open_store(tmp_path, index_batch=1, index_delay_s=0)

    def mark_dead(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE events SET state = {DEAD} WHERE seq >= 2")
        conn.execute("INSERT INTO dead_letters SELECT seq, event_id, 0, 400, 'x', 'y', 'z' "
                     "FROM events WHERE seq >= 2")

    async def run() -> None:
        await store.write([row(1), row(2), row(3)])
        await store.apply(mark_dead)
        await store.apply(purge_dead(None))
        assert mark(tmp_path) == 1  # the newest sequence numbers will be handed out again
        await store.write([row(4, user="w")])

    try:
        asyncio.run(run())
        assert mark(tmp_path) == 2
        assert derived_counts(tmp_path) == {"facts": 2, "by_user": 2, "by_trace": 2}
        with Reader(tmp_path) as reader:
            assert [d["id"] for d in reader.search(user="w")] == ["e4"]
    finally:
        store.close()


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


def test_a_version_1_store_is_upgraded_and_indexed(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.executescript(V1_SCHEMA)
        conn.executemany(f"INSERT INTO events VALUES (NULL{', ?' * 16}, 0)",
                         [tuple(row(n, user=f"u{n % 2}")) for n in range(10)])
    store = open_store(tmp_path, index_batch=4, index_delay_s=0)
    try:
        with Reader(tmp_path) as reader:  # before indexing: all of it is tail
            assert len(reader.search(user="u1", limit=100)) == 5
        async def run() -> None:
            await store.write([row(10, user="u1")])
            for _ in range(500):
                if mark(tmp_path) == 11:
                    break
                await asyncio.sleep(0.01)  # the store's timer indexes the backlog; bounded

        asyncio.run(run())
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
            assert watermarks(conn) == {"facts": 11, "by_user": 11, "by_trace": 11}
        assert {"events_user", "events_trace", "events_report"}.isdisjoint(names)
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


def test_catch_up_fills_every_table_at_once(tmp_path: Path) -> None:
    store = open_store(tmp_path, index_batch=10**9, index_delay_s=10**9)
    try:
        asyncio.run(store.write([row(n) for n in range(30)]))
        assert mark(tmp_path) == 0
        store.catch_up()
        assert derived_counts(tmp_path) == {"facts": 30, "by_user": 30, "by_trace": 30}
        with Reader(tmp_path) as reader:
            assert reader.unindexed() == 0
    finally:
        store.close()
