"""The single writer: SQLite in WAL mode, commits grouped per event-loop turn, housekeeping."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from ingest.enrich import Row
from ingest.errors import StoreError, StoreFull, StoreUnavailable
from ingest.store.schema import (
    CHUNKS,
    DB_NAME,
    DEAD,
    ID_PROBE,
    INSERTS,
    PENDING,
    PRUNE_CHUNK,
    QUARANTINE,
    ROW_OVERHEAD,
    SCHEMA,
)


@dataclass(frozen=True, slots=True)
class Invalid:
    """A quarantined event: its bytes exactly as received (array elements too) and the reason."""

    raw: bytes
    reason: str


Op = Callable[[sqlite3.Connection], None]


@dataclass(slots=True)
class _Job:
    rows: Sequence[Row]
    invalid: Sequence[Invalid]
    received_ms: int
    future: asyncio.Future[list[bool]]
    op: Op | None = None
    inserted: list[bool] = field(default_factory=list)
    error: StoreError | None = None


class Store:
    """The single writer: every write queued while the previous commit syncs goes in the next one.

    Inserts run on the event loop thread and only COMMIT (the fsync) runs on a helper thread.
    A writer thread doing every SQLite call would have to win the GIL back from the busy loop
    after each one (a convoy that cut throughput 5x here); this way CPU work and the disk sync
    overlap and each group needs a single hand-off.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        sync: str = "full",
        max_bytes: int = 10 << 30,
        min_free_bytes: int = 100 << 20,
        retention_ms: int = 30 * 86_400_000,
        housekeeping_s: float = 30.0,
        keep_pending: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(data_dir) / DB_NAME
        # With a sink, retention never deletes what has not been shipped yet.
        self.keep_pending = keep_pending
        self.sync = sync
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.retention_ms = retention_ms
        self.housekeeping_s = housekeeping_s
        self.clock = clock
        self.full_reason: str | None = None
        self.last_error: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._queued: list[_Job] = []
        self._flush_scheduled = False
        self._committing = False
        self._syncer: ThreadPoolExecutor | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._checked_at = 0.0
        self._used = 0

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open (creating if needed); raises StoreUnavailable when the store cannot be used."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL syncs the WAL on every commit: a 2xx then survives power loss, not only a crash.
            conn.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            # Short: the writer runs on the event loop and must not sit behind another writer.
            conn.execute("PRAGMA busy_timeout=1000")
            conn.execute("PRAGMA cache_size=-16384")
            conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the store at {self.path}: {exc}") from exc
        self._conn = conn
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="store-sync")
        self._check_space(force=True)

    def close(self) -> None:
        """Commit whatever is queued, then close. Call from the loop that wrote, or with none."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is None:
            return
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        conn, jobs, self._queued = self._conn, self._queued, []
        if jobs:
            self._insert(conn, jobs)
            self._finish(jobs, self._sync(conn))
        conn.close()
        self._conn = None

    @property
    def running(self) -> bool:
        return self._conn is not None

    # writing ---------------------------------------------------------------------------------
    def refuse_if_full(self) -> None:
        if self._conn is None:
            raise StoreUnavailable("the store is not open")
        if self.full_reason is not None:
            raise StoreFull(self.full_reason)

    async def write(self, rows: Sequence[Row], invalid: Sequence[Invalid] = (),
                    received_ms: int = 0) -> list[bool]:
        """Commit rows and quarantined items together; per row, True if new, False if a dup."""
        self.refuse_if_full()
        return await self._enqueue(_Job(rows, invalid, received_ms,
                                        asyncio.get_running_loop().create_future()))

    async def apply(self, op: Op) -> None:
        """Run `op(connection)` inside the next commit group (shipping state, dead letters).

        Not refused when the store is full: marking events shipped is what frees it.
        """
        if self._conn is None:
            raise StoreUnavailable("the store is not open")
        await self._enqueue(_Job((), (), 0, asyncio.get_running_loop().create_future(), op))

    async def _enqueue(self, job: _Job) -> list[bool]:
        loop = asyncio.get_running_loop()
        self._queued.append(job)
        self._schedule(loop)
        return await job.future

    async def probe(self) -> None:
        """Round trip through the writer (an empty group); raises StoreError when it fails."""
        await self.write(())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled and not self._committing:
            self._flush_scheduled = True
            # Runs after every request already handed to the loop has queued its rows.
            loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_later(self.housekeeping_s, self._housekeeping)

    def _flush(self) -> None:
        self._flush_scheduled = False
        jobs, self._queued = self._queued, []
        conn, syncer = self._conn, self._syncer
        if not jobs:
            return
        if conn is None or syncer is None:
            self._finish(jobs, StoreUnavailable("the store is closed"))
            return
        failed = self._insert(conn, jobs)
        if failed is not None:
            if len(jobs) > 1 and not isinstance(failed, StoreFull):
                # Rare path: one job at a time, so one bad request cannot fail its neighbours.
                for job in jobs:
                    self._finish([job], self._insert(conn, [job]) or self._sync(conn))
                return
            self._finish(jobs, failed)
            return
        self._committing = True
        loop = asyncio.get_running_loop()
        syncing = loop.run_in_executor(syncer, self._sync, conn)
        syncing.add_done_callback(lambda done: self._synced(loop, jobs, done.result()))

    def _synced(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job],
                error: StoreError | None) -> None:
        self._committing = False
        self._finish(jobs, error)
        if error is None:
            # Between exact measurements, count what was added so a burst cannot overshoot.
            self._used += sum(len(r.doc) + len(r.raw) + ROW_OVERHEAD
                              for job in jobs for r, new in zip(job.rows, job.inserted,
                                                                strict=True) if new)
        self._check_space(force=self._used > self.max_bytes)
        if self._queued:
            self._schedule(loop)

    def _insert(self, conn: sqlite3.Connection, jobs: list[_Job]) -> StoreError | None:
        """BEGIN and insert every job's rows; on failure roll back and return the error."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            seen = self._existing(conn, [row[0] for job in jobs for row in job.rows])
            new: list[Row] = []
            for job in jobs:
                flags = job.inserted = []
                for row in job.rows:
                    fresh = row[0] not in seen
                    flags.append(fresh)
                    if fresh:
                        seen.add(row[0])
                        new.append(row)
                for bad in job.invalid:
                    digest = hashlib.sha256(bad.raw).hexdigest()
                    conn.execute(QUARANTINE, (job.received_ms, bad.reason, digest, bad.raw))
                if job.op is not None:
                    job.op(conn)
            start = 0
            while start < len(new):
                size = next(n for n in CHUNKS if n <= len(new) - start)
                conn.execute(INSERTS[size], list(chain.from_iterable(new[start:start + size])))
                start += size
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return self._classify(exc)
        return None

    @staticmethod
    def _existing(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
        """Which of `ids` the store already holds (the dedup check, one lookup per 500)."""
        found: set[str] = set()
        for start in range(0, len(ids), ID_PROBE):
            part = ids[start:start + ID_PROBE]
            sql = f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(part))})"
            found.update(event_id for (event_id,) in conn.execute(sql, part))
        return found

    def _sync(self, conn: sqlite3.Connection) -> StoreError | None:
        """COMMIT, run on the sync thread while the loop goes on queueing the next group."""
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return self._classify(exc)
        self.last_error = None
        return None

    @staticmethod
    def _finish(jobs: list[_Job], error: StoreError | None) -> None:
        for job in jobs:
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(job.inserted)

    def _classify(self, exc: Exception) -> StoreError:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            self.full_reason = "the disk under the store is full"
            return StoreFull(self.full_reason)
        return StoreUnavailable(f"the store could not commit: {exc}")

    # housekeeping ----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        if self._conn is None:
            return
        if self._committing:  # the connection is busy on the sync thread: try again shortly
            self._timer = loop.call_later(0.05, self._housekeeping)
            return
        try:
            more = self.prune(max_chunks=4)
        except sqlite3.Error as exc:
            self.last_error = f"pruning failed: {exc}"
            more = False
        self._check_space(force=True)
        # Pruning goes in small steps so the loop keeps serving; come back soon if unfinished.
        delay = 0.05 if more else self.housekeeping_s
        self._timer = loop.call_later(delay, self._housekeeping)

    def prune(self, max_chunks: int | None = None) -> bool:
        """Delete events and quarantined items older than the retention; True if more remain.

        Rows are taken oldest first by sequence, which follows receive order: no index on
        receive time is needed, which keeps every insert cheaper.
        """
        conn = self._conn
        assert conn is not None
        cutoff = int(self.clock() * 1000) - self.retention_ms
        keep = f" AND state != {PENDING}" if self.keep_pending else ""
        chunks = 0
        for table, key, extra in (("events", "seq", keep), ("quarantine", "id", "")):
            while True:
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "
                    f"ORDER BY {key} LIMIT {PRUNE_CHUNK}) AND received_at < ?{extra}", (cutoff,))
                chunks += 1
                if cur.rowcount < PRUNE_CHUNK:
                    break
                if max_chunks is not None and chunks >= max_chunks:
                    return True
        conn.execute("DELETE FROM dead_letters WHERE seq NOT IN (SELECT seq FROM events "
                     f"WHERE state = {DEAD})")
        return False

    def _check_space(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < 0.5:
            return
        self._checked_at = now
        conn = self._conn
        if conn is None:
            return
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            disk = os.statvfs(self.path.parent)
        except (sqlite3.Error, OSError) as exc:
            self.last_error = f"cannot measure the store: {exc}"
            return
        used = self._used = (pages - free_pages) * page_size
        free_disk = disk.f_bavail * disk.f_frsize
        if used > self.max_bytes:
            self.full_reason = f"the store holds {used} bytes, over its {self.max_bytes} limit"
        elif free_disk < self.min_free_bytes:
            self.full_reason = (f"only {free_disk} bytes free on the store's disk, "
                                f"under the {self.min_free_bytes} minimum")
        else:
            self.full_reason = None
