"""The disk budget: the floor plus a WAL checkpoint, the room left, what counts as no space."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from ingest.store import space
from ingest.store.space import DISK_PER_BYTE, Space

MIB = 1 << 20


def at(free: int, checkpoint: int = 0, used: int = 0) -> Space:
    return Space(used=used, free_disk=free, checkpoint=checkpoint, wal=checkpoint)


def test_the_disk_must_hold_the_floor_and_a_checkpoint_of_the_wal() -> None:
    assert space.needed(at(0, checkpoint=30 * MIB), 100 * MIB) == 130 * MIB
    assert space.short_of_disk(at(130 * MIB, checkpoint=30 * MIB), 100 * MIB) is None
    reason = space.short_of_disk(at(130 * MIB - 1, checkpoint=30 * MIB), 100 * MIB)
    assert reason == (f"only {130 * MIB - 1} bytes free on the store's disk, under the "
                      f"{130 * MIB} it needs: {30 * MIB} to checkpoint the WAL plus the "
                      f"{100 * MIB} minimum")


def test_with_no_floor_the_checkpoint_still_counts() -> None:
    # The operator's setting from the report: no floor, a WAL waiting to be checkpointed.
    assert space.short_of_disk(at(3 * MIB, checkpoint=32 * MIB), 0) is not None
    assert space.short_of_disk(at(32 * MIB, checkpoint=32 * MIB), 0) is None


def test_a_disk_with_nothing_free_is_short_even_without_floor_or_wal() -> None:
    assert space.short_of_disk(at(0), 0) == ("only 0 bytes free on the store's disk, under "
                                             "the 0 minimum")
    assert space.short_of_disk(at(1), 0) is None


def test_over_the_size_limit() -> None:
    assert space.over_limit(at(MIB, used=11), 10) == "the store holds 11 bytes, over its 10 limit"
    assert space.over_limit(at(MIB, used=10), 10) is None


def test_room_is_the_nearer_of_the_two_limits() -> None:
    # Disk: every stored byte may take DISK_PER_BYTE of disk before the next measurement.
    assert space.room(at(100 * MIB + 8 * MIB, checkpoint=MIB), 1 << 40, 99 * MIB) == \
        8 * MIB // DISK_PER_BYTE
    assert space.room(at(1 << 40, used=90), 100, 0) == 10
    assert space.room(at(MIB, checkpoint=2 * MIB), 1 << 40, 0) < 0


def test_measure_counts_the_pages_past_the_end_of_the_file(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(bytes(3 * 16384))
    Path(f"{db}-wal").write_bytes(bytes(5000))
    measured = space.measure(123, db_pages=5, page_size=16384, db_path=db, free=77)
    assert measured == Space(used=123, free_disk=77, checkpoint=2 * 16384, wal=5000)
    # A WAL rewriting pages the file already has needs no more disk to be checkpointed.
    assert space.measure(1, db_pages=2, page_size=16384, db_path=db, free=0).checkpoint == 0


def test_free_disk_is_what_statvfs_gives_an_unprivileged_writer(tmp_path: Path) -> None:
    disk = os.statvfs(tmp_path)
    assert space.free_disk(tmp_path) == disk.f_bavail * disk.f_frsize


class _Coded(Exception):
    def __init__(self, code: int) -> None:
        super().__init__("coded")
        self.sqlite_errorcode = code


@pytest.mark.parametrize(("exc", "free", "expected"), [
    (OSError(errno.ENOSPC, "No space left on device"), None, True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), None, True),
    (OSError(errno.EACCES, "Permission denied"), 0, False),
    (_Coded(sqlite3.SQLITE_FULL), None, True),
    (_Coded(sqlite3.SQLITE_CORRUPT), 0, False),
    (_Coded(sqlite3.SQLITE_IOERR), 0, True),  # e.g. the shared-memory index could not grow
    (_Coded(sqlite3.SQLITE_IOERR | (19 << 8)), 0, True),  # an extended I/O error code
    (_Coded(sqlite3.SQLITE_IOERR), MIB, False),  # with space free, an I/O error is an I/O error
    (_Coded(sqlite3.SQLITE_IOERR), None, False),
    (ValueError("no"), 0, False),
])
def test_what_counts_as_no_space(exc: BaseException, free: int | None, expected: bool) -> None:
    assert space.no_space(exc, free) is expected


def test_sqlite_reports_a_full_database_as_sqlite_full(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA max_page_count = 2")
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("INSERT INTO t VALUES (?)", (bytes(100_000),))
        assert space.no_space(info.value)
    finally:
        conn.close()
