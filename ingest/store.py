"""Durable embedded store: SQLite in WAL mode, commits grouped per event-loop turn, the spool."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from ingest.bulk import DeadLetter, Pending
from ingest.enrich import Row
from ingest.errors import StoreError, StoreFull, StoreUnavailable
from ingest.reports import Query

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
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, ts) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_trace ON events(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE state = {PENDING};
-- Covering index for the reports: a window scan reads this narrow index, not the documents.
CREATE INDEX IF NOT EXISTS events_report ON events(ts, model, status_code, latency_ms, user_id,
    cost_usd, computed_cost_usd, prompt_tokens, completion_tokens, tokens_used);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    failed_at INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    target TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL
);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_COLUMNS = ", ".join(Row._fields)
_VALUES = "(" + ", ".join("?" * len(Row._fields)) + ")"
# Multi-row statements of a few fixed sizes: far fewer calls per group, and few enough shapes
# that every statement stays in sqlite3's statement cache.
_CHUNKS = (64, 16, 4, 1)
_INSERTS = {n: f"INSERT OR IGNORE INTO events ({_COLUMNS}) VALUES " + ", ".join([_VALUES] * n)
            for n in _CHUNKS}
_ID_PROBE = 500  # ids per `IN (...)` lookup, well under SQLite's bound-parameter limit
_QUARANTINE = ("INSERT OR IGNORE INTO quarantine (received_at, reason, digest, raw) "
               "VALUES (?, ?, ?, ?)")
_PRUNE_CHUNK = 2000
_ROW_OVERHEAD = 300  # columns and index entries beside the document and raw bytes


@dataclass(frozen=True, slots=True)
class Invalid:
    """A quarantined event: its bytes as received (array elements re-encoded) and the reason."""

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
            conn.executescript(_SCHEMA)
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
            self._used += sum(len(r.doc) + len(r.raw) + _ROW_OVERHEAD
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
                    conn.execute(_QUARANTINE, (job.received_ms, bad.reason, digest, bad.raw))
                if job.op is not None:
                    job.op(conn)
            start = 0
            while start < len(new):
                size = next(n for n in _CHUNKS if n <= len(new) - start)
                conn.execute(_INSERTS[size], list(chain.from_iterable(new[start:start + size])))
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
        for start in range(0, len(ids), _ID_PROBE):
            part = ids[start:start + _ID_PROBE]
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
                    f"ORDER BY {key} LIMIT {_PRUNE_CHUNK}) AND received_at < ?{extra}", (cutoff,))
                chunks += 1
                if cur.rowcount < _PRUNE_CHUNK:
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


def mark_done(shipped: Sequence[int], dead: Sequence[DeadLetter], target: str,
              now_ms: int) -> Op:
    """Op: `shipped` are in Elasticsearch; `dead` were refused for good and wait in `dlq`."""
    def op(conn: sqlite3.Connection) -> None:
        for start in range(0, len(shipped), _ID_PROBE):
            part = shipped[start:start + _ID_PROBE]
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
        for start in range(0, len(seqs), _ID_PROBE):
            part = seqs[start:start + _ID_PROBE]
            marks = ", ".join("?" * len(part))
            conn.execute(f"DELETE FROM events WHERE state = {DEAD} AND seq IN ({marks})", part)
            conn.execute(f"DELETE FROM dead_letters WHERE seq IN ({marks})", part)
    return op


def _casefold(value: str | None) -> str | None:
    return None if value is None else value.casefold()


class Reader:
    """Read-only queries over the store; safe beside a running writer (WAL)."""

    def __init__(self, data_dir: Path) -> None:
        path = Path(data_dir) / DB_NAME
        if not path.exists():
            raise StoreUnavailable(f"no store at {path}: has the receiver run with this data dir?")
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.create_function("casefold", 1, _casefold, deterministic=True)
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
            # SQLite's LIKE folds only ASCII case; error texts come in every language.
            where.append("instr(casefold(error_message), ?) > 0")
            args.append(text.casefold())
        sql = "SELECT doc, state FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, seq DESC LIMIT ?"
        return [self._doc(doc, state) for doc, state in self._query(sql, [*args, limit])]

    def pending(self, after_seq: int, limit: int) -> list[Pending]:
        """Pending events after `after_seq`, oldest first (the shipper's lease)."""
        rows = self._query(f"SELECT seq, event_id, doc, raw FROM events WHERE seq > ? AND "
                           f"state = {PENDING} ORDER BY seq LIMIT ?", [after_seq, limit])
        return [Pending(seq, event_id, doc, raw) for seq, event_id, doc, raw in rows]

    def first_pending(self) -> int | None:
        found: int | None = self._query(
            f"SELECT min(seq) FROM events WHERE state = {PENDING}", [])[0][0]
        return found

    def state_counts(self) -> dict[str, int]:
        """Events by shipping state without a full scan: pending through its partial index,
        dead from the dead-letter table, shipped as what the sequence range holds besides."""
        pending = self._query(f"SELECT count(*) FROM events WHERE state = {PENDING}", [])[0][0]
        dead = self._query("SELECT count(*) FROM dead_letters", [])[0][0]
        low, high = self._query("SELECT min(seq), max(seq) FROM events", [])[0]
        held = 0 if low is None else high - low + 1
        return {"pending": pending, "shipped": max(0, held - pending - dead), "dead": dead}

    def oldest_pending_ms(self) -> int | None:
        """Receive time of the oldest event not shipped yet (the shipping lag)."""
        rows = self._query(f"SELECT received_at FROM events WHERE state = {PENDING} "
                           "ORDER BY seq LIMIT 1", [])
        return rows[0][0] if rows else None

    def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._query("SELECT seq, event_id, failed_at, status, error_type, reason, target "
                           "FROM dead_letters ORDER BY seq DESC LIMIT ?", [limit])
        keys = ("seq", "event_id", "failed_at", "status", "error_type", "reason", "target")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def dead_letter(self, seq: int) -> dict[str, Any] | None:
        rows = self._query("SELECT d.seq, d.event_id, d.failed_at, d.status, d.error_type, "
                           "d.reason, d.target, e.doc, e.raw FROM dead_letters d JOIN events e "
                           "ON e.seq = d.seq WHERE d.seq = ?", [seq])
        if not rows:
            return None
        keys = ("seq", "event_id", "failed_at", "status", "error_type", "reason", "target")
        found = dict(zip(keys, rows[0][:7], strict=True))
        found["doc"] = orjson.loads(rows[0][7])
        found["raw"] = rows[0][8].decode("utf-8", "replace")
        return found

    # Report queries (ingest.reports shapes the answers) ------------------------------------
    def _where(self, q: Query, extra: str = "") -> tuple[str, list[Any]]:
        where = ["ts >= ?", "ts < ?"]
        args: list[Any] = [q.since_ms, q.until_ms]
        if q.model is not None:
            where.append("model = ?")
            args.append(q.model)
        if q.user is not None:
            where.append("user_id = ?")
            args.append(q.user)
        if extra:
            where.append(extra)
        return " WHERE " + " AND ".join(where), args

    def latencies(self, q: Query) -> dict[str, list[float]]:
        """Each model's latencies in the window, sorted (SQLite sorts; exact percentiles)."""
        where, args = self._where(q, "latency_ms IS NOT NULL")
        found: dict[str, list[float]] = {}
        for model, values in self._query(
                f"SELECT coalesce(model, '(none)'), json_group_array(latency_ms) FROM "
                f"(SELECT model, latency_ms FROM events{where} ORDER BY latency_ms) "
                "GROUP BY 1", args):
            found[model] = orjson.loads(values)
        return found

    def error_counts(self, q: Query) -> list[tuple[str | None, int, int]]:
        where, args = self._where(q)
        return [tuple(row) for row in self._query(
            f"SELECT model, count(*), count(*) FILTER (WHERE status_code >= 400) FROM events"
            f"{where} GROUP BY model", args)]

    def top_errors(self, q: Query, per_model: int) -> dict[str | None, list[tuple[str, int]]]:
        where, args = self._where(q, "status_code >= 400 AND error_message IS NOT NULL")
        found: dict[str | None, list[tuple[str, int]]] = {}
        for model, message, count in self._query(
                f"SELECT model, error_message, count(*) AS n FROM events{where} "
                "GROUP BY model, error_message ORDER BY n DESC", args):
            if len(found.setdefault(model, [])) < per_model:
                found[model].append((message, count))
        return found

    def cost(self, q: Query, by: str) -> list[dict[str, Any]]:
        """Per UTC day (and model or user): requests, both costs, tokens."""
        key = {"day": "NULL", "model": "model", "user": "user_id"}[by]
        where, args = self._where(q)
        rows = self._query(
            f"SELECT strftime('%Y-%m-%d', ts / 1000, 'unixepoch') AS day, {key} AS key, "
            "count(*), total(cost_usd), total(computed_cost_usd), total(prompt_tokens), "
            f"total(completion_tokens), total(tokens_used) FROM events{where} "
            "GROUP BY day, key ORDER BY day, key", args)
        names = ("day", "key", "requests", "cost_usd", "computed_cost_usd", "prompt_tokens",
                 "completion_tokens", "total_tokens")
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            for tokens in ("prompt_tokens", "completion_tokens", "total_tokens"):
                item[tokens] = int(item[tokens])
            out.append(item)
        return out

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
