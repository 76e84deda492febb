"""Opening the events database: a read-only check, then the writer's settings and schema."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from ingest.errors import StoreUnavailable
from ingest.store.schema import OBJECTS, SCHEMA, SCHEMA_VERSION, UPGRADE

log = logging.getLogger("ingest.store")


def inspect(conn: sqlite3.Connection, path: Path) -> tuple[int, set[str]]:
    """The schema version and the names of the store's tables and indexes (reading them
    finds a file that is not a database, or a damaged one)."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the store at {path} has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade holysheep-ingest")
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    return version, names


def check(path: Path) -> None:
    """Raises StoreUnavailable when the store at `path` is unreadable, corrupt or too new.

    Read-only, so that a full disk is no reason to fail: it writes nothing, creates no file,
    and a read-only connection does not checkpoint on closing either.
    """
    if not path.exists():  # the writer creates it, once the disk has room for it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # even for want of space: the store's readers need the folder
            raise StoreUnavailable(f"cannot create the store's folder {path.parent}: "
                                   f"{exc}") from exc
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"cannot open the store at {path}: {path.parent} is not "
                                   "writable")
        return
    # Without a shared-memory file, nothing waits in a WAL (it was emptied and removed when
    # the last connection closed): read the file as it is, and create no files on its disk.
    settled = "" if Path(f"{path}-shm").exists() else "&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro{settled}", uri=True)
        try:
            inspect(conn, path)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc


def open_writer(path: Path, wal_limit_bytes: int) -> sqlite3.Connection:
    """The writer's connection, the schema brought up to date; raises sqlite3.Error or
    OSError (a full disk among them) and StoreUnavailable (a newer store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        version, names = inspect(conn, path)
        # Before anything is written: a new store's page size cannot change later. 4 KiB
        # pages halve the bytes written per event when ids come in no order (each event
        # rewrites a page of the id index) but raised the single-event p99 by half.
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        # A commit only writes WAL frames; `Durability` syncs them (with sync=full, before any
        # 2xx, so it survives power loss) and checkpoints, both off the event loop.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={int(wal_limit_bytes)}")
        # Short: the writer runs on the event loop and must not sit behind another writer.
        conn.execute("PRAGMA busy_timeout=1000")
        # 8 MiB: the ack path touches the newest pages only, and 16 MiB cost 9 MiB of peak
        # memory under batches for nothing measurable.
        conn.execute("PRAGMA cache_size=-8192")
        if version in (1, 2):
            conn.executescript(UPGRADE)
        if version and "events_settled" not in names:
            # A store from before it: built once, about a second per million events.
            log.info("indexing the shipped events of %s for retention (once)", path)
        # Only when something is missing: even an unchanged version number is a write, which
        # a full disk refuses.
        if version != SCHEMA_VERSION or not names >= OBJECTS:
            conn.executescript(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn
