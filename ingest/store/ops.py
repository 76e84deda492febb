"""Operations run inside a commit group: shipping states and dead letters."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ingest.records import DeadLetter
from ingest.store import index
from ingest.store.schema import DEAD, ID_PROBE, PENDING, SHIPPED
from ingest.store.writer import Op


def mark_done(shipped: Sequence[int], dead: Sequence[DeadLetter], target: str,
              now_ms: int) -> Op:
    """Op: `shipped` are in Elasticsearch; `dead` were refused for good and wait in `dlq`."""
    def op(conn: sqlite3.Connection) -> None:
        for start in range(0, len(shipped), ID_PROBE):
            part = shipped[start:start + ID_PROBE]
            conn.execute(f"UPDATE events SET state = {SHIPPED} WHERE seq IN "
                         f"({', '.join('?' * len(part))})", part)
        conn.executemany(f"UPDATE events SET state = {DEAD} WHERE seq = ?",
                         [(d.item.seq,) for d in dead])
        conn.executemany(
            "INSERT OR REPLACE INTO dead_letters (seq, event_id, failed_at, status, error_type,"
            " reason, target) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(d.item.seq, d.item.event_id, now_ms, d.status, d.error_type, d.reason, target)
             for d in dead])
    return op


def requeue_dead(seqs: Sequence[int] | None, doc: bytes | None = None) -> Op:
    """Op: dead letters (all when `seqs` is None) become pending again, optionally re-documented."""
    def op(conn: sqlite3.Connection) -> None:
        where = "" if seqs is None else f" AND seq IN ({', '.join('?' * len(seqs))})"
        args = () if seqs is None else tuple(seqs)
        if doc is not None:
            conn.execute(f"UPDATE events SET doc = ? WHERE state = {DEAD}{where}", (doc, *args))
        conn.execute(f"UPDATE events SET state = {PENDING} WHERE state = {DEAD}{where}", args)
        conn.execute(f"DELETE FROM dead_letters WHERE seq NOT IN (SELECT seq FROM events "
                     f"WHERE state = {DEAD})")
    return op


def purge_dead(failed_before_ms: int | None) -> Op:
    """Op: forget dead letters (those that failed before the given time, or all)."""
    def op(conn: sqlite3.Connection) -> None:
        cutoff = (" WHERE failed_at < ?", (failed_before_ms,)) if failed_before_ms is not None \
            else ("", ())
        seqs = [seq for (seq,) in conn.execute(f"SELECT seq FROM dead_letters{cutoff[0]}",
                                               cutoff[1])]
        for start in range(0, len(seqs), ID_PROBE):
            part = seqs[start:start + ID_PROBE]
            marks = ", ".join("?" * len(part))
            index.forget(conn, f"state = {DEAD} AND seq IN ({marks})", part)
            conn.execute(f"DELETE FROM dead_letters WHERE seq IN ({marks})", part)
    return op
