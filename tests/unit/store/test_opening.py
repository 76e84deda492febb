"""Opening the events database: the read-only check, and opening without a needless write."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from ingest.errors import StoreUnavailable
from ingest.store import DB_NAME, Budget, Store, opening
from ingest.store.schema import OBJECTS, SCHEMA, SCHEMA_VERSION


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def made_store(folder: Path) -> Path:
    store = Store(folder, budget=Budget(min_free_bytes=0))
    store.start()
    asyncio.run(store.write(()))
    store.close()
    return folder / DB_NAME


def test_objects_name_everything_the_schema_creates(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    try:
        conn.executescript(SCHEMA)
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")
                 if not name.startswith("sqlite_autoindex_")}
    finally:
        conn.close()
    assert names == OBJECTS


def test_check_reads_and_writes_nothing(tmp_path: Path) -> None:
    made_store(tmp_path)
    before = files(tmp_path)
    opening.check(tmp_path / DB_NAME)
    assert files(tmp_path) == before


def test_check_of_a_store_not_made_yet_makes_its_folder_only(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / DB_NAME
    opening.check(path)
    assert path.parent.is_dir() and not path.exists()


def test_check_refuses_a_folder_it_cannot_make(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="cannot create the store's folder"):
        opening.check(tmp_path / "file" / DB_NAME)


def test_check_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, " * 200)
    with pytest.raises(StoreUnavailable, match=r"cannot open the store at .*not a database"):
        opening.check(tmp_path / DB_NAME)


def test_check_refuses_a_store_from_a_newer_release(tmp_path: Path) -> None:
    path = made_store(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer than this release"):
        opening.check(path)


def test_opening_a_current_store_writes_nothing(tmp_path: Path) -> None:
    path = made_store(tmp_path)
    before = path.read_bytes()
    conn = opening.open_writer(path, 1 << 20)
    try:
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        assert path.read_bytes() == before
    finally:
        conn.close()


def test_opening_a_store_missing_an_index_creates_it(tmp_path: Path) -> None:
    path = made_store(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX events_pending")
    conn.close()
    conn = opening.open_writer(path, 1 << 20)
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_master "
                            "WHERE name = 'events_pending'").fetchone() == (1,)
    finally:
        conn.close()
