"""Durable embedded store: SQLite in WAL mode, one writer thread that groups commits, the spool."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ingest.enrich import Row
from ingest.errors import StoreError, StoreFull, StoreUnavailable

PENDING, SHIPPED, DEAD = 0, 1, 2
STATES = {PENDING: "pending", SHIPPED: "shipped", DEAD: "dead"}
DB_NAME = "events.db"
SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    model TEXT,
    status_code INTEGER,
    latency_ms REAL,
    user_id TEXT,
    trace_id TEXT,
    error_message TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    tokens_used INTEGER,
    cost_usd REAL,
    computed_cost_usd REAL,
    doc BLOB NOT NULL,
    raw BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT {PENDING}
);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events(event_id);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, ts) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_trace ON events(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE state = {PENDING};
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine(received_at);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_INSERT = (f"INSERT OR IGNORE INTO events ({', '.join(Row._fields)}) "
           f"VALUES ({', '.join('?' * len(Row._fields))})")
_QUARANTINE = ("INSERT OR IGNORE INTO quarantine (received_at, reason, digest, raw) "
               "VALUES (?, ?, ?, ?)")
_PRUNE_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Invalid:
    """A quarantined event: its bytes exactly as received and why it was refused."""

    raw: bytes
    reason: str


@dataclass(slots=True)
class _Job:
    rows: Sequence[Row]
    invalid: Sequence[Invalid]
    received_ms: int
    future: asyncio.Future[list[bool]]
    loop: asyncio.AbstractEventLoop
    inserted: list[bool] = field(default_factory=list)
    error: StoreError | None = None


_STOP = object()


def _resolve(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.inserted)


class Store:
    """The writer: every accepted event passes through one thread and one transaction per group."""

    def __init__(
        self,
        data_dir: Path,
        *,
        sync: str = "full",
        max_bytes: int = 10 << 30,
        min_free_bytes: int = 100 << 20,
        retention_ms: int = 30 * 86_400_000,
        housekeeping_s: float = 30.0,
        max_group: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.sync = sync
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.retention_ms = retention_ms
        self.housekeeping_s = housekeeping_s
        self.max_group = max_group
        self.clock = clock
        self.full_reason: str | None = None
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._checked_at = 0.0
        self._pruned_at = 0.0

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open (creating if needed) and start the writer; raises StoreUnavailable on failure."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL syncs the WAL on every commit: a 2xx then survives power loss, not only a crash.
            conn.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA cache_size=-16384")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the store at {self.path}: {exc}") from exc
        self._conn = conn
        self._check_space(force=True)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish every queued write, then stop the writer."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # writing ---------------------------------------------------------------------------------
    def refuse_if_full(self) -> None:
        if self.full_reason is not None:
            raise StoreFull(self.full_reason)
        if not self.running:
            raise StoreUnavailable("the store writer is not running")

    async def write(self, rows: Sequence[Row], invalid: Sequence[Invalid] = (),
                    received_ms: int = 0) -> list[bool]:
        """Commit rows and quarantined items together; per row, True if new, False if a dup."""
        self.refuse_if_full()
        loop = asyncio.get_running_loop()
        job = _Job(rows, invalid, received_ms, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    async def probe(self) -> None:
        """Round trip through the writer taking the write lock; raises StoreError when it cannot."""
        await self.write(())

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        pending: list[_Job] = []
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.housekeeping_s)
                except queue.Empty:
                    self._housekeeping(conn)
                    continue
                stop = item is _STOP
                if not stop:
                    pending = [item]
                    count = len(item.rows)
                    while count < self.max_group:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if item is _STOP:
                            stop = True
                            break
                        pending.append(item)
                        count += len(item.rows)
                    self._commit(conn, pending)
                    self._deliver(pending)
                    pending = []
                    self._housekeeping(conn)
                if stop:
                    break
        except BaseException as exc:
            self.last_error = f"store writer stopped: {exc!r}"
            for job in pending:
                job.error = StoreUnavailable(self.last_error)
            self._deliver(pending)
            raise
        finally:
            self._thread_done(conn)

    def _thread_done(self, conn: sqlite3.Connection) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item.error = StoreUnavailable("the store is shutting down")
                self._deliver([item])
        conn.close()

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                execute = conn.execute
                for job in jobs:
                    job.inserted = [execute(_INSERT, row).rowcount == 1 for row in job.rows]
                    for bad in job.invalid:
                        digest = hashlib.sha256(bad.raw).hexdigest()
                        execute(_QUARANTINE, (job.received_ms, bad.reason, digest, bad.raw))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            error = self._classify(exc)
            if len(jobs) > 1 and not isinstance(error, StoreFull):
                # Commit the jobs one by one so one bad request cannot fail its neighbours.
                for job in jobs:
                    self._commit(conn, [job])
                return
            for job in jobs:
                job.inserted = []
                job.error = error
            return
        self.last_error = None

    def _classify(self, exc: Exception) -> StoreError:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            self.full_reason = "the disk under the store is full"
            return StoreFull(self.full_reason)
        return StoreUnavailable(f"the store could not commit: {exc}")

    @staticmethod
    def _deliver(jobs: list[_Job]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, group in by_loop.items():
            # A closed loop means nobody is waiting for the answer any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, group)

    # housekeeping ----------------------------------------------------------------------------
    def _housekeeping(self, conn: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now - self._pruned_at >= self.housekeeping_s:
            self._pruned_at = now
            try:
                self.prune(conn)
            except sqlite3.Error as exc:
                self.last_error = f"pruning failed: {exc}"
            self._check_space(force=True)
        else:
            self._check_space()

    def prune(self, conn: sqlite3.Connection | None = None) -> int:
        """Delete events and quarantined items older than the retention, in small transactions."""
        conn = conn or self._conn
        assert conn is not None
        cutoff = int(self.clock() * 1000) - self.retention_ms
        removed = 0
        for table in ("events", "quarantine"):
            key = "seq" if table == "events" else "id"
            while True:
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "
                    f"WHERE received_at < ? LIMIT {_PRUNE_CHUNK})", (cutoff,))
                removed += cur.rowcount
                if cur.rowcount < _PRUNE_CHUNK:
                    break
        return removed

    def _check_space(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < 0.5:
            return
        self._checked_at = now
        conn = self._conn
        assert conn is not None
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            disk = os.statvfs(self.path.parent)
        except (sqlite3.Error, OSError) as exc:
            self.last_error = f"cannot measure the store: {exc}"
            return
        used = (pages - free_pages) * page_size
        free_disk = disk.f_bavail * disk.f_frsize
        if used > self.max_bytes:
            self.full_reason = f"the store holds {used} bytes, over its {self.max_bytes} limit"
        elif free_disk < self.min_free_bytes:
            self.full_reason = (f"only {free_disk} bytes free on the store's disk, "
                                f"under the {self.min_free_bytes} minimum")
        else:
            self.full_reason = None


class Reader:
    """Read-only queries over the store; safe beside a running writer (WAL)."""

    def __init__(self, data_dir: Path) -> None:
        path = Path(data_dir) / DB_NAME
        if not path.exists():
            raise StoreUnavailable(f"no store at {path}: has the receiver run with this data dir?")
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def search(self, *, event_id: str | None = None, user: str | None = None,
               trace: str | None = None, text: str | None = None,
               limit: int = 20) -> list[dict[str, Any]]:
        """Newest first; every given filter must match; text is a case-insensitive substring."""
        where, args = [], []
        for column, value in (("event_id", event_id), ("user_id", user), ("trace_id", trace)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("error_message LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        sql = "SELECT doc, state FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, seq DESC LIMIT ?"
        return [self._doc(doc, state) for doc, state in self._query(sql, [*args, limit])]

    def quarantined(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, received_at, reason, raw FROM quarantine "
                           "ORDER BY id DESC LIMIT ?", [limit])
        return [{"id": i, "received_at": r, "reason": why, "raw": raw.decode("utf-8", "replace")}
                for i, r, why, raw in rows]

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM events GROUP BY state", [])
        found = {STATES.get(state, str(state)): n for state, n in rows}
        found["quarantined"] = self._query("SELECT count(*) FROM quarantine", [])[0][0]
        return {name: found.get(name, 0) for name in (*STATES.values(), "quarantined")}

    def _query(self, sql: str, args: Iterable[Any]) -> list[Any]:
        try:
            return self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store query failed: {exc}") from exc

    @staticmethod
    def _doc(doc: bytes, state: int) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(doc)
        data["_state"] = STATES.get(state, str(state))
        return data
