"""The derived tables: filled in bulk behind the acknowledgement path, emptied with the events."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ingest.store.schema import DERIVED, FACT_COLUMNS

_FACTS = ", ".join(name for name, _ in FACT_COLUMNS)
# Each table filled in its own key order: one pass over each B-tree instead of a page
# rewritten per event and index.
_FILL = {
    "facts": f"INSERT OR IGNORE INTO facts (ts, seq, {_FACTS}) SELECT ts, seq, {_FACTS} "
             "FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY ts, seq",
    "by_user": "INSERT OR IGNORE INTO by_user (user_id, ts, seq) SELECT user_id, ts, seq "
               "FROM events WHERE seq > ?1 AND seq <= ?2 AND user_id IS NOT NULL "
               "ORDER BY user_id, ts, seq",
    "by_trace": "INSERT OR IGNORE INTO by_trace (trace_id, seq) SELECT trace_id, seq "
                "FROM events WHERE seq > ?1 AND seq <= ?2 AND trace_id IS NOT NULL "
                "ORDER BY trace_id, seq",
}
_FORGET = (
    "DELETE FROM facts WHERE ts = ? AND seq = ?",
    "DELETE FROM by_user WHERE user_id = ? AND ts = ? AND seq = ?",
    "DELETE FROM by_trace WHERE trace_id = ? AND seq = ?",
)


def watermarks(conn: sqlite3.Connection) -> dict[str, int]:
    """The last sequence number each derived table holds."""
    return dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                             f"({', '.join(repr(t) for t in DERIVED)})").fetchall())


def tail(conn: sqlite3.Connection) -> tuple[dict[str, int], int]:
    """Each derived table's watermark, and the newest sequence number stored."""
    newest = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    return watermarks(conn), newest or 0


def furthest_behind(marks: dict[str, int]) -> str:
    return min(DERIVED, key=lambda table: marks[table])


def fill(conn: sqlite3.Connection, table: str, after: int, through: int) -> None:
    """Index events `after < seq <= through` into `table`, moving its watermark.

    One table a step: the step's stall is a third of filling all three at once.
    """
    conn.execute(_FILL[table], (after, through))
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (through, table))


def forget(conn: sqlite3.Connection, where: str, args: Sequence[object] = ()) -> int:
    """Delete the events matching `where` and their derived rows; returns how many went.

    Derived rows are found by their full keys, read from the events before they go.
    """
    rows = conn.execute(f"SELECT seq, ts, user_id, trace_id FROM events WHERE {where}",
                        args).fetchall()
    if not rows:
        return 0
    conn.executemany(_FORGET[0], [(ts, seq) for seq, ts, _, _ in rows])
    conn.executemany(_FORGET[1], [(user, ts, seq) for seq, ts, user, _ in rows
                                  if user is not None])
    conn.executemany(_FORGET[2], [(trace, seq) for seq, _, _, trace in rows
                                  if trace is not None])
    conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _, _, _ in rows])
    # New events take max(seq) + 1: if the newest went, the watermark must not stay above
    # sequence numbers that will be handed out again.
    conn.execute("UPDATE meta SET value = min(value, (SELECT coalesce(max(seq), 0) FROM events)) "
                 f"WHERE key IN ({', '.join(repr(t) for t in DERIVED)})")
    return len(rows)
