"""The derived tables: a file of their own, filled in bulk on a thread of their own."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ingest.store.durability import ReadGate, background_priority
from ingest.store.schema import DB_NAME, DERIVED, FACT_COLUMNS, INDEX_NAME, index_schema

_FACTS = ", ".join(name for name, _ in FACT_COLUMNS)
# Each table filled in its own key order: one pass over each B-tree instead of a page
# rewritten per event and index.
_FILL = {
    "facts": f"INSERT OR IGNORE INTO facts (ts, seq, {_FACTS}) SELECT ts, seq, {_FACTS} "
             "FROM ev.events WHERE seq > ?1 AND seq <= ?2 ORDER BY ts, seq",
    "by_user": "INSERT OR IGNORE INTO by_user (user_id, ts, seq) SELECT user_id, ts, seq "
               "FROM ev.events WHERE seq > ?1 AND seq <= ?2 AND user_id IS NOT NULL "
               "ORDER BY user_id, ts, seq",
    "by_trace": "INSERT OR IGNORE INTO by_trace (trace_id, seq) SELECT trace_id, seq "
                "FROM ev.events WHERE seq > ?1 AND seq <= ?2 AND trace_id IS NOT NULL "
                "ORDER BY trace_id, seq",
}
_FORGET = (
    "DELETE FROM facts WHERE ts = ? AND seq = ?",
    "DELETE FROM by_user WHERE user_id = ? AND ts = ? AND seq = ?",
    "DELETE FROM by_trace WHERE trace_id = ? AND seq = ?",
)
_DERIVED_KEYS = f"key IN ({', '.join(repr(t) for t in DERIVED)})"
log = logging.getLogger("ingest.store")
STEP = 20_000  # events per table and transaction: big steps rewrite fewer pages per event


def _broken(exc: sqlite3.Error) -> bool:
    """The file is not a database or is corrupt (rather than busy, full or unreadable)."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT,
                                                      sqlite3.SQLITE_NOTADB)


def watermarks(conn: sqlite3.Connection) -> dict[str, int]:
    """The last sequence number each derived table holds."""
    return dict(conn.execute(f"SELECT key, value FROM meta WHERE {_DERIVED_KEYS}").fetchall())


def forget(conn: sqlite3.Connection, where: str, args: Sequence[object] = ()) -> int:
    """On the writer: delete the events matching `where`; returns how many went.

    Their keys go to `forgotten` in the same transaction, for the indexer to delete the
    derived rows by (a crash in between loses nothing).
    """
    rows = conn.execute(f"SELECT seq, ts, user_id, trace_id FROM events WHERE {where}",
                        args).fetchall()
    if not rows:
        return 0
    conn.executemany("INSERT INTO forgotten (seq, ts, user_id, trace_id) VALUES (?, ?, ?, ?)",
                     rows)
    conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _, _, _ in rows])
    # New events take max(seq) + 1: if the newest went, the watermarks must come back down
    # before sequence numbers they cover are handed out again.
    newest = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    if max(seq for seq, _, _, _ in rows) > newest:
        conn.execute("INSERT INTO forgotten (rewind) VALUES (?)", (newest,))
    return len(rows)


def drop_forgotten(conn: sqlite3.Connection, through: int) -> None:
    """On the writer: the indexer has applied `forgotten` up to id `through`."""
    conn.execute("DELETE FROM forgotten WHERE id <= ?", (through,))


class Indexer:
    """Keeps `index.db` up to date from the events, on one thread at a lower priority.

    The writer only says how many events it added; once `batch` wait, or `delay_s` after
    the last round, the thread applies what was forgotten and fills every table that is
    behind. Readers add the events past each table's watermark themselves, so a backlog
    costs search time, never a wrong answer.
    """

    def __init__(self, data_dir: Path, *, batch: int = 1500, delay_s: float = 1.0,
                 readers: ReadGate | None = None) -> None:
        """`readers`: the gate each read of the events goes through."""
        self.path = Path(data_dir) / INDEX_NAME
        self._readers = readers or ReadGate()
        self.batch = batch
        self.delay_s = delay_s
        self.last_error: str | None = None
        # Set by the writer while its disk is short: rounds wait, `catch_up` does not.
        self.paused = False
        self.forgotten = 0  # the last `forgotten` id applied and committed
        self._waiting = 0
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()  # one round at a time: the thread's or `catch_up`'s
        self._events = Path(data_dir) / DB_NAME
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if not _broken(exc):
                raise
            self._conn = self._rebuild(exc)
        self._thread = threading.Thread(target=self._run, name="store-index", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}", uri=True, isolation_level=None,
                               check_same_thread=False)
        try:
            # Small pages: filling a B-tree by random keys rewrites a page per key.
            conn.execute("PRAGMA page_size=4096")
            conn.execute("PRAGMA journal_mode=WAL")
            # Rebuildable from the events: a commit lost to power loss is filled again.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.executescript(index_schema())
            # Read-only: no statement of the indexer can take the events' write lock.
            conn.execute("ATTACH DATABASE ? AS ev", (f"file:{self._events}?mode=ro",))
            self.forgotten = conn.execute(
                "SELECT value FROM meta WHERE key = 'forgotten'").fetchone()[0]
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _rebuild(self, exc: sqlite3.Error) -> sqlite3.Connection:
        """Everything here derives from the events: a damaged file is set aside and refilled,
        never a reason for the receiver not to start."""
        aside = self.path.with_name(f"{INDEX_NAME}.broken-{time.time_ns() // 1_000_000}")
        log.warning("%s is damaged (%s): moved to %s, the search tables are filled again",
                    self.path, exc, aside.name)
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        return self._open()

    def added(self, count: int) -> None:
        """On the loop, after a commit: `count` more events wait."""
        self._waiting += count
        if self._waiting >= self.batch:
            self._waiting = 0
            self._wake.set()

    def catch_up(self) -> None:
        """Index everything stored, now, on the calling thread."""
        with self._lock:
            self._round()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()
        with self._lock:
            self._conn.close()

    def _run(self) -> None:
        background_priority()
        while True:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            if self._stop:
                return
            if self.paused:
                continue
            with self._lock:
                try:
                    self._round()
                except sqlite3.Error as exc:
                    self.last_error = f"indexing failed: {exc}"
                    if _broken(exc):
                        self._replace_broken(exc)
                else:
                    self.last_error = None

    def _replace_broken(self, exc: sqlite3.Error) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        try:
            self._conn = self._rebuild(exc)
        except (sqlite3.Error, OSError) as again:
            self.last_error = f"cannot rebuild {self.path}: {again}"

    def _round(self) -> None:
        """Apply what was forgotten, then fill each table behind in steps of `STEP` events."""
        while not self._stop:
            with self._readers.reading():
                more = self._step()
            if not more:
                return

    def _step(self) -> bool:
        """One transaction; True if there is more to do."""
        conn = self._conn
        conn.execute("BEGIN")  # deferred: a write lock on this file only, never the events'
        try:
            applied = self._apply_forgotten(conn)
            marks = watermarks(conn)
            newest: int = conn.execute("SELECT coalesce(max(seq), 0) FROM ev.events").fetchone()[0]
            table = min(DERIVED, key=lambda name: marks[name])
            through = min(newest, marks[table] + STEP)
            if through > marks[table]:
                conn.execute(_FILL[table], (marks[table], through))
                conn.execute("UPDATE meta SET value = ? WHERE key = ?", (through, table))
                marks[table] = through
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if applied is not None:
            self.forgotten = applied
        return min(marks.values()) < newest

    def _apply_forgotten(self, conn: sqlite3.Connection) -> int | None:
        # `self.forgotten` is the meta row: only this connection writes it, one round at a time.
        rows = conn.execute("SELECT id, seq, ts, user_id, trace_id, rewind FROM ev.forgotten "
                            "WHERE id > ? ORDER BY id", (self.forgotten,)).fetchall()
        if not rows:
            return None
        gone = [row for row in rows if row[1] is not None]
        conn.executemany(_FORGET[0], [(ts, seq) for _, seq, ts, _, _, _ in gone])
        conn.executemany(_FORGET[1], [(user, ts, seq) for _, seq, ts, user, _, _ in gone
                                      if user is not None])
        conn.executemany(_FORGET[2], [(trace, seq) for _, seq, _, _, trace, _ in gone
                                      if trace is not None])
        for *_, rewind in rows:
            if rewind is not None:
                conn.execute(f"UPDATE meta SET value = min(value, ?) WHERE {_DERIVED_KEYS}",
                             (rewind,))
        last: int = rows[-1][0]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'forgotten'", (last,))
        return last
