"""Retention: deleting the events and quarantined items older than it, a chunk at a time."""

from __future__ import annotations

import sqlite3

from ingest.store import index
from ingest.store.options import Retention
from ingest.store.schema import DEAD, PENDING, PRUNE_CHUNK


def prune(conn: sqlite3.Connection, settings: Retention, now_ms: int,
          indexer: index.Indexer | None, max_chunks: int | None = None) -> bool:
    """Delete what was received over the retention before `now_ms`; True if more remain
    after `max_chunks`.

    Rows are taken oldest first by sequence, which follows receive order: no index on
    receive time is needed, which keeps every insert cheaper. With `keep_pending` (a sink),
    only shipped and dead events expire, taken in order from their own index: unshipped ones
    at the front (a sink down for longer than the retention) are stepped over, not stopped at.
    """
    cutoff_ms = now_ms - settings.retention_ms
    settled = f" WHERE state != {PENDING}" if settings.keep_pending else ""
    chunks = 0
    for table, key, among in (("events", "seq", settled), ("quarantine", "id", "")):
        while True:
            where = (f"{key} IN (SELECT {key} FROM {table}{among} ORDER BY {key} "
                     f"LIMIT {PRUNE_CHUNK}) AND received_at < ?")
            # One transaction a chunk: events and the keys their derived rows go by.
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                if table == "events":
                    gone = index.forget(conn, where, (cutoff_ms,))
                else:
                    gone = conn.execute(f"DELETE FROM {table} WHERE {where}",
                                        (cutoff_ms,)).rowcount
            chunks += 1
            if gone < PRUNE_CHUNK:
                break
            if max_chunks is not None and chunks >= max_chunks:
                return True
    with conn:
        conn.execute("DELETE FROM dead_letters WHERE seq NOT IN (SELECT seq FROM events "
                     f"WHERE state = {DEAD})")
        if indexer is not None:
            # Read last: what the indexer thread applied while the chunks went is dropped too.
            index.drop_forgotten(conn, indexer.forgotten)
    return False
