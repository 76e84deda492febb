"""The single writer: SQLite in WAL mode, commits grouped per event-loop turn, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from ingest.errors import StoreError, StoreFull, StoreUnavailable
from ingest.records import Invalid, Row
from ingest.store import capacity, index, opening, retention, space
from ingest.store.durability import Durability
from ingest.store.options import Background, Budget, Retention
from ingest.store.schema import (
    CHUNKS,
    DB_NAME,
    INSERTS,
    QUARANTINE,
    ROW_OVERHEAD,
)

log = logging.getLogger("ingest.store")


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
        budget: Budget = Budget(),
        retention: Retention = Retention(),
        background: Background = Background(),
        housekeeping_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        disk_free: Callable[[Path], int] = space.free_disk,
    ) -> None:
        """`sync`: "full" fsyncs each commit group before answering, "normal" survives
        crashes only. `housekeeping_s`: how often retention and the capacity check run."""
        self.path = Path(data_dir) / DB_NAME
        self.sync = sync
        self.retention = retention
        self.background = background
        self.housekeeping_s = housekeeping_s
        self.clock = clock
        self.capacity = capacity.Capacity(self.path, budget, disk_free=disk_free,
                                          pause=self._pause_indexer)
        self.last_error: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._queued: list[_Job] = []
        # The loop a flush waits on: one that ended (a CLI's asyncio.run, a test's) must not
        # make the next loop believe its work is already scheduled.
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._durability: Durability | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._indexer: index.Indexer | None = None
        self._added = self._fresh = 0
        self._waiting_to_open = False  # the disk had no room to open the store on

    @property
    def full_reason(self) -> str | None:
        """Why writes are refused (StoreFull), None while they are taken."""
        return self.capacity.full_reason

    @full_reason.setter
    def full_reason(self, reason: str | None) -> None:
        self.capacity.full_reason = reason

    @property
    def space(self) -> space.Space | None:
        """The last measurement of the store and its disk."""
        return self.capacity.space

    # lifecycle -------------------------------------------------------------------------------
    def check(self) -> None:
        """Read-only: raises StoreUnavailable when the store is unreadable, corrupt or too new.

        Writes nothing and needs no free disk (a full disk is no reason not to start).
        """
        opening.check(self.path)

    def start(self) -> None:
        """Open (creating if needed); raises StoreUnavailable when the store cannot be used.

        A disk too full to open it on is not such a case: the store then refuses writes with
        StoreFull, as when it fills up while running, and opens itself on the housekeeping
        timer once space allows.
        """
        self._waiting_to_open = False
        try:
            self._open()
        except StoreFull as exc:
            self._waiting_to_open = True
            self.capacity.set_full(exc.message, disk=True)
        else:
            self._check_space(force=True)
        with contextlib.suppress(RuntimeError):  # no loop: a command-line tool, a test
            self._timer = asyncio.get_running_loop().call_later(
                self.housekeeping_s, self._housekeeping)

    def _open(self) -> None:
        """Raises StoreFull when opening needed a write the disk had no room for."""
        conn: sqlite3.Connection | None = None
        try:
            background = self.background
            conn = opening.open_writer(self.path, background.wal_limit_bytes)
            self._durability = Durability(self.path, full=self.sync == "full",
                                          checkpoint_every_s=background.checkpoint_every_s)
            self._indexer = index.Indexer(self.path.parent, batch=background.index_batch,
                                          delay_s=background.index_delay_s,
                                          readers=self._durability.readers)
        except (sqlite3.Error, OSError) as exc:
            self._stop_indexer()
            if self._durability is not None:
                self._durability.close()
                self._durability = None
            if conn is not None:
                conn.close()
            if space.no_space(exc, self.capacity.free_disk()):
                raise StoreFull(f"the disk under the store at {self.path} is too full to "
                                f"open it: {exc}") from exc
            raise StoreUnavailable(f"cannot open the store at {self.path}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        """Commit whatever is queued, then close. Call from the loop that wrote, or with none."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._waiting_to_open = False
        self._stop_indexer()
        if self._conn is None or self._durability is None:
            return
        conn, jobs, self._queued = self._conn, self._queued, []
        durability, self._durability = self._durability, None
        failed = (self._insert(conn, jobs) or self._commit(conn)) if jobs else None
        durability.close()  # runs the callbacks still waiting for a sync
        self._finish(jobs, failed)
        conn.close()
        self._conn = None

    def _stop_indexer(self) -> None:
        if self._indexer is not None:
            self._indexer.close()
            self._indexer = None

    def _pause_indexer(self, disk_short: bool) -> None:
        if self._indexer is not None:
            # The derived tables can wait; the disk they would take is the WAL checkpoint's.
            self._indexer.paused = disk_short

    @property
    def running(self) -> bool:
        return self._conn is not None

    # writing ---------------------------------------------------------------------------------
    def refuse_if_full(self) -> None:
        self.capacity.refuse(running=self._conn is not None,
                             waiting_to_open=self._waiting_to_open)

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
        if self._flush_loop is not loop:
            self._flush_loop = loop
            # Runs after every request already handed to the loop has queued its rows.
            loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = loop.call_later(self.housekeeping_s, self._housekeeping)

    def _flush(self) -> None:
        self._flush_loop = None
        jobs, self._queued = self._queued, []
        conn = self._conn
        if not jobs:
            return
        if conn is None:
            self._finish(jobs, StoreUnavailable("the store is closed"))
            return
        failed = self._insert(conn, jobs) or self._commit(conn)
        if failed is None:
            self._committed(jobs)
        elif len(jobs) > 1 and not isinstance(failed, StoreFull):
            # Rare path: one job at a time, so one bad request cannot fail its neighbours.
            for job in jobs:
                failed = self._insert(conn, [job]) or self._commit(conn)
                if failed is None:
                    self._committed([job])
                else:
                    self._finish([job], failed)
        else:
            self._finish(jobs, failed)

    def _committed(self, jobs: list[_Job]) -> None:
        """In the WAL: answer once durable; count what was added so a burst cannot overshoot."""
        assert self._durability is not None and self._conn is not None
        self._durability.tidy(self._conn)
        if self._indexer is not None:
            self._indexer.added(self._fresh)
        self._measured(self.capacity.spent(self._conn, self._added))
        self._durability.committed(asyncio.get_running_loop(),
                                   lambda error: self._durable(jobs, error))

    def _durable(self, jobs: list[_Job], error: OSError | None) -> None:
        self._finish(jobs, None if error is None else
                     StoreUnavailable(f"the store could not sync to disk: {error}"))

    def catch_up(self) -> None:
        """Fill the derived tables with everything stored, now (after a bulk load, in tests)."""
        if self._indexer is None:
            raise StoreUnavailable("the store is not open")
        self._indexer.catch_up()

    def _insert(self, conn: sqlite3.Connection, jobs: list[_Job]) -> StoreError | None:
        """BEGIN and insert every job's rows; on failure roll back and return the error."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows = [row for job in jobs for row in job.rows]
            # OR IGNORE skips ids already held (or repeated in this group); RETURNING names
            # the rows that went in, so the dedup check costs no extra lookup.
            stored: set[str] = set()
            start = 0
            while start < len(rows):
                size = next(n for n in CHUNKS if n <= len(rows) - start)
                stored.update(event_id for (event_id,) in conn.execute(
                    INSERTS[size], list(chain.from_iterable(rows[start:start + size]))))
                start += size
            added = new_rows = 0
            for job in jobs:
                flags = job.inserted = []
                for row in job.rows:
                    fresh = row[0] in stored
                    flags.append(fresh)
                    if fresh:
                        stored.discard(row[0])  # a repeat later in the group is a duplicate
                        added += len(row.doc) + len(row.raw) + ROW_OVERHEAD
                        new_rows += 1
                for bad in job.invalid:
                    digest = hashlib.sha256(bad.raw).hexdigest()
                    conn.execute(QUARANTINE, (job.received_ms, bad.reason, digest, bad.raw))
                if job.op is not None:
                    job.op(conn)
            self._added, self._fresh = added, new_rows
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return self._classify(exc)
        return None

    def _commit(self, conn: sqlite3.Connection) -> StoreError | None:
        """COMMIT: writes the WAL frames; `Durability` syncs them."""
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
        if space.no_space(exc):
            # Refused from now on: the housekeeping timer checkpoints the WAL and measures
            # again, and takes writes once the disk has room (`_check_space`).
            self.capacity.set_full("the disk under the store is full", disk=True)
            return StoreFull("the disk under the store is full")
        return StoreUnavailable(f"the store could not commit: {exc}")

    # housekeeping ----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        if self._conn is None:
            if self._waiting_to_open:
                self._retry_open()
                self._timer = loop.call_later(self.housekeeping_s, self._housekeeping)
            return
        more = False
        if self.capacity.disk_short:
            # Pruning frees no disk (pages go to the free list) and would need WAL space the
            # disk may not have: first copy the WAL into the database and give its disk back.
            self._recover(loop)
        else:
            try:
                more = self.prune(max_chunks=4)
            except sqlite3.Error as exc:
                self.last_error = f"pruning failed: {exc}"
        self._check_space(force=True)
        # Pruning goes in small steps so the loop keeps serving; come back soon if unfinished.
        delay = 0.05 if more else self.housekeeping_s
        self._timer = loop.call_later(delay, self._housekeeping)

    def _retry_open(self) -> None:
        try:
            self._open()
        except StoreFull as exc:
            self.capacity.set_full(exc.message, disk=True)
            return
        except StoreUnavailable as exc:
            self.last_error = exc.message
            log.error("%s", exc.message)
            return
        self._waiting_to_open = False
        log.info("store open at %s", self.path)
        self._check_space(force=True)

    def _recover(self, loop: asyncio.AbstractEventLoop) -> None:
        """While the disk is short: checkpoint the WAL on the checkpoint thread and, once all
        of it is in the database, truncate it; then measure again."""
        measured = self.capacity.space
        if self._durability is None or measured is None or not measured.wal:
            return
        wal = measured.wal
        self._durability.recover(loop, lambda error: self._recovered(wal, error))

    def _recovered(self, wal: int, error: str | None) -> None:
        if error is None:
            log.warning("checkpointed the WAL of %s and gave its %d bytes back to the disk",
                        self.path, wal)
        elif error != self.last_error:  # said once, not at every tick
            # A checkpoint cut short by the full disk keeps the pages it copied: the next one
            # goes on from there, so space freed bit by bit is used as it comes.
            log.warning("the WAL of %s is not checkpointed yet: %s", self.path, error)
        self.last_error = error
        self._check_space(force=True)

    def prune(self, max_chunks: int | None = None) -> bool:
        """Delete events and quarantined items older than the retention; True if more remain
        (see `retention.prune`)."""
        assert self._conn is not None
        return retention.prune(self._conn, self.retention, int(self.clock() * 1000),
                               self._indexer, max_chunks)

    def _check_space(self, force: bool = False) -> None:
        self._measured(self.capacity.check(self._conn, force))

    def _measured(self, error: str | None) -> None:
        if error is not None:
            self.last_error = error
