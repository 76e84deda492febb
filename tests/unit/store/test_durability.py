"""Durable commits: WAL fsyncs coalesced off the loop, failures reach the writers."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from receiver import wait_until

from ingest.errors import StoreUnavailable
from ingest.store import Background, Budget, Store, index
from ingest.store.durability import (
    CHECKPOINT_NICE,
    CHECKPOINT_PASSES,
    TIDY_FRAMES,
    Durability,
    ReadGate,
)
from ingest.testing import row as make_row


def wal_db(tmp_path: Path) -> Path:
    path = tmp_path / "x.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    Path(f"{path}-wal").touch()
    return path


def test_without_full_sync_commits_are_done_at_once(tmp_path: Path) -> None:
    durability = Durability(wal_db(tmp_path), full=False)
    seen: list[OSError | None] = []

    async def run() -> None:
        durability.committed(asyncio.get_running_loop(), seen.append)

    try:
        asyncio.run(run())
        assert seen == [None]
    finally:
        durability.close()


def test_commits_during_an_fsync_share_the_next_one(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    calls: list[int] = []

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        release.wait(5)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    durability = Durability(wal_db(tmp_path), full=True)
    done: list[str] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        durability.committed(loop, lambda e: done.append("a"))
        durability.committed(loop, lambda e: done.append("b"))  # waits: one fsync at a time
        durability.committed(loop, lambda e: done.append("c"))
        assert done == [] and len(calls) <= 1
        release.set()
        while len(done) < 3:
            await asyncio.sleep(0.001)  # the fsync thread reports through the loop; bounded

    try:
        asyncio.run(asyncio.wait_for(run(), 10))
        assert done == ["a", "b", "c"]
        assert len(calls) == 2  # a alone, then b and c together
    finally:
        durability.close()


def test_a_failed_fsync_fails_the_writes_it_covered(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path, budget=Budget(min_free_bytes=0))
    store.start()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    doc = orjson.dumps({"id": "a"})
    one = make_row("a", received_at=1, ts=1, doc=doc)
    monkeypatch.setattr(os, "fdatasync", broken)
    try:
        with pytest.raises(StoreUnavailable, match="could not sync"):
            asyncio.run(store.write([one]))
    finally:
        monkeypatch.undo()
        store.close()


def test_close_syncs_what_still_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    durability = Durability(wal_db(tmp_path), full=True)
    done: list[OSError | None] = []
    durability._waiting.append(done.append)  # as if queued behind a running fsync
    durability.close()
    assert done == [None]


@pytest.mark.parametrize("indexer", ["quiet", "always reading"])
def test_the_wal_starts_over_under_continuous_writes(
        tmp_path: Path, indexer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pace = {"index_batch": 10**9, "index_delay_s": 10**9}
    if indexer == "always reading":
        # An indexer that never waits and holds each read of the events for 20 ms, as a big
        # step does: without the read gate the WAL never gets a moment to start over.
        pace = {"index_batch": 1, "index_delay_s": 0}
        apply = index.Indexer._apply_forgotten

        def slow(self: index.Indexer, conn: sqlite3.Connection) -> int | None:
            found = apply(self, conn)
            time.sleep(0.02)  # a slow reader (fault injection), not synchronisation
            return found

        monkeypatch.setattr(index.Indexer, "_apply_forgotten", slow)
    store = Store(tmp_path, budget=Budget(min_free_bytes=0),
                  background=Background(checkpoint_every_s=0.01, wal_limit_bytes=1 << 20, **pace))
    store.start()
    blob = b"x" * 4000
    count = 2500 if indexer == "quiet" else 6000
    # 20 or 48 MB, far over the limit
    rows = [make_row(f"e{n}", received_at=1, ts=1, doc=blob) for n in range(count)]
    peak = [0]

    async def writer(first: int) -> None:
        for start in range(first, len(rows), 100):
            await store.write(rows[start:start + 25])
            peak[0] = max(peak[0], Path(f"{store.path}-wal").stat().st_size)

    async def run() -> None:
        # Four writers in turn keep a commit going at any time, as under load.
        await asyncio.gather(*(writer(first) for first in (0, 25, 50, 75)))

    try:
        asyncio.run(run())
        wal = Path(f"{store.path}-wal").stat().st_size
    finally:
        store.close()
    written = count * 8000
    assert peak[0] < written * 0.7, f"the WAL grew to {peak[0]} bytes of {written} written"
    if indexer == "quiet":
        assert wal < 4 << 20, f"the WAL grew to {wal} bytes"


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux only")
def test_checkpoints_run_below_the_event_loop_priority(tmp_path: Path) -> None:
    durability = Durability(wal_db(tmp_path), full=True)

    def own_priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        checkpoint = durability._checkpointer.submit(own_priority).result(timeout=10)
        assert checkpoint == min(19, own_priority() + CHECKPOINT_NICE)
        assert own_priority() == os.getpriority(os.PRIO_PROCESS, 0)  # the loop's is unchanged
    finally:
        durability.close()


class _Checkpoints:
    """A connection whose WAL still holds (log, copied) frames after each checkpoint."""

    def __init__(self, *results: tuple[int, int]) -> None:
        self.results = list(results)
        self.calls = 0

    def execute(self, sql: str) -> _Checkpoints:
        assert sql == "PRAGMA wal_checkpoint(PASSIVE)"
        self.calls += 1
        return self

    def fetchone(self) -> tuple[int, int, int]:
        log, copied = self.results.pop(0)
        return 0, log, copied

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("results", "passes"), [
    ([(5000, 5000)], 1),                                  # caught up at once
    ([(5000, 3000), (6000, 5950), (6000, 6000)], 2),      # a second pass for what came in
    ([(10000, 0), (12000, 8000), (12500, 11000), (12600, 12590), (12600, 12600)],
     CHECKPOINT_PASSES),                                  # converging, but not done at the cap
    ([(9000, 0), (12000, 3000), (12000, 12000)], 2),      # outpaced: leave the rest to `tidy`
])
def test_a_checkpoint_goes_over_what_was_written_meanwhile(
        tmp_path: Path, results: list[tuple[int, int]], passes: int) -> None:
    durability = Durability(wal_db(tmp_path), full=True)
    fake = _Checkpoints(*results)
    durability._checkpoint_conn = fake  # type: ignore[assignment]
    try:
        durability._run_checkpoint()
        assert fake.calls == passes
        assert durability._caught_up
        assert 5000 - 3000 > TIDY_FRAMES >= 6000 - 5950  # what the cases stand for
    finally:
        durability._checkpoint_conn = None
        durability.close()


def test_the_read_gate_waits_for_the_reader_inside_then_keeps_readers_out() -> None:
    gate = ReadGate()
    inside, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def first_reader() -> None:
        with gate.reading():
            inside.set()
            leave.wait(10)
            order.append("first reader out")

    def checkpoint() -> None:
        gate.close()
        order.append("closed")

    def second_reader() -> None:
        with gate.reading():
            order.append("second reader in")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert inside.wait(10)
    threads.append(threading.Thread(target=checkpoint))
    threads[1].start()
    wait_until(lambda: gate._closing, 10, "the checkpoint to wait at the gate")
    leave.set()
    threads[1].join(10)
    assert order == ["first reader out", "closed"]
    threads.append(threading.Thread(target=second_reader))
    threads[2].start()
    wait_until(lambda: len(gate._cond._waiters) == 1, 10,  # type: ignore[attr-defined]
               "the second reader to wait at the closed gate")
    order.append("opened")
    gate.open()
    threads[2].join(10)
    assert order == ["first reader out", "closed", "opened", "second reader in"]


def test_a_reader_goes_ahead_when_the_writer_never_opens_the_gate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.store.durability as durability
    monkeypatch.setattr(durability, "READ_GATE_WAIT_S", 0.05)
    gate = ReadGate()
    gate.close()
    assert gate._closed
    with gate.reading():
        assert not gate._closed  # opened by the reader that waited, for the ones after it


def _wal_with_rows(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    path = wal_db(tmp_path)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                   "WHERE i < 2000) INSERT INTO t SELECT randomblob(1000) FROM n")
    return path, writer


def _recover(durability: Durability) -> str | None:
    async def run() -> str | None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str | None] = loop.create_future()
        durability.recover(loop, answer.set_result)
        return await asyncio.wait_for(answer, 10)

    return asyncio.run(run())


def test_recover_copies_the_whole_wal_and_gives_its_disk_back(tmp_path: Path) -> None:
    path, writer = _wal_with_rows(tmp_path)
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 2_000_000
    durability = Durability(path, full=True)
    try:
        assert _recover(durability) is None
        assert wal.stat().st_size == 0
        assert path.stat().st_size > 2_000_000  # the pages are in the database file now
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (2000,)
        writer.execute("INSERT INTO t VALUES (1)")  # the WAL starts over from nothing
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (2001,)
    finally:
        durability.close()
        writer.close()


def test_recover_leaves_a_wal_that_is_still_read_for_the_next_round(tmp_path: Path) -> None:
    path, writer = _wal_with_rows(tmp_path)
    wal = Path(f"{path}-wal")
    size = wal.stat().st_size
    reading = sqlite3.connect(path, isolation_level=None)
    reading.execute("BEGIN")
    reading.execute("SELECT count(*) FROM t").fetchone()  # holds its snapshot in the WAL
    writer.execute("INSERT INTO t VALUES (1)")  # a frame that reader does not see
    durability = Durability(path, full=True)
    try:
        error = _recover(durability)
        assert error is not None and "still read from" in error
        assert wal.stat().st_size >= size
        reading.execute("COMMIT")
        assert _recover(durability) is None
        assert wal.stat().st_size == 0
    finally:
        durability.close()
        reading.close()
        writer.close()
