"""The store's disk budget: when writes must stop, and how much room is left before they do."""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

# Disk bytes one stored byte may take before the next measurement: its WAL frames now, the
# database pages a checkpoint copies them to later, and the page slack around both.
DISK_PER_BYTE = 4
# Errors that mean "no space" rather than "broken": the store waits for room instead of failing.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class Space:
    """One measurement of the store and the disk under it, in bytes."""

    used: int  # pages in use in the events database, plus the derived tables' files
    free_disk: int  # free to an unprivileged writer (ext4 keeps a reserve even root cannot use)
    checkpoint: int  # what the database file grows by when the WAL is copied into it
    wal: int  # the WAL file as it stands on disk


def free_disk(folder: Path) -> int:
    """Bytes an unprivileged writer can still write on the file system holding `folder`."""
    disk = os.statvfs(folder)
    return disk.f_bavail * disk.f_frsize


def measure(used: int, db_pages: int, page_size: int, db_path: Path, free: int) -> Space:
    """`db_pages`: the database's size as the writer sees it, the WAL included."""
    file_size = db_path.stat().st_size if db_path.exists() else 0
    wal = Path(f"{db_path}-wal")
    return Space(used=used, free_disk=free,
                 checkpoint=max(0, db_pages * page_size - file_size),
                 wal=wal.stat().st_size if wal.exists() else 0)


def over_limit(space: Space, max_bytes: int) -> str | None:
    if space.used > max_bytes:
        return f"the store holds {space.used} bytes, over its {max_bytes} limit"
    return None


def needed(space: Space, min_free: int) -> int:
    """Free disk the store needs to take writes: the floor plus a checkpoint of the WAL.

    Pages still only in the WAL must be copied into the database file before the WAL can be
    emptied; without room for that copy the WAL can only grow, so no write is taken then.
    """
    return min_free + space.checkpoint


def short_of_disk(space: Space, min_free: int) -> str | None:
    """Why the disk cannot take more writes, or None. A disk with nothing free is short even
    with no floor set."""
    need = needed(space, min_free)
    if space.free_disk >= need and space.free_disk > 0:
        return None
    if space.checkpoint:
        return (f"only {space.free_disk} bytes free on the store's disk, under the {need} it "
                f"needs: {space.checkpoint} to checkpoint the WAL plus the {min_free} minimum")
    return (f"only {space.free_disk} bytes free on the store's disk, under the {min_free} "
            "minimum")


def room(space: Space, max_bytes: int, min_free: int) -> int:
    """Bytes of new rows the store can take before one of the limits is reached."""
    return min(max_bytes - space.used,
               (space.free_disk - needed(space, min_free)) // DISK_PER_BYTE)


def no_space(exc: BaseException, free_disk: int | None = None) -> bool:
    """The error says the disk is full (or, for an I/O error, the disk has nothing free)."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    # SQLite reports a failed write to its shared-memory index as an I/O error.
    return (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR
            and free_disk is not None and free_disk == 0)
