"""The store's capacity check: measurements held to the rules in `space`, and the full state.

`space` keeps the pure rules (what a measurement means); this module keeps the state they act
on: the last measurement, the room left until the next one, and why writes are refused.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from ingest.errors import StoreFull, StoreUnavailable
from ingest.store import space
from ingest.store.options import Budget
from ingest.store.schema import INDEX_NAME

log = logging.getLogger("ingest.store")
# While the store refuses writes, what it waits for is logged again this often.
FULL_LOG_EVERY_S = 60.0
# Unforced checks closer together than this are skipped: the room count covers the gap.
CHECK_EVERY_S = 0.5


class Capacity:
    """Whether the store at `path` takes writes, within `budget`.

    `pause(disk_short)` is told on every change of state, so the derived tables can wait while
    the disk they would take is the WAL checkpoint's.
    """

    def __init__(self, path: Path, budget: Budget, *, disk_free: Callable[[Path], int],
                 pause: Callable[[bool], None]) -> None:
        self.path = path
        self.index_path = path.parent / INDEX_NAME
        self.budget = budget
        self.disk_free = disk_free
        self._pause = pause
        self.full_reason: str | None = None
        self.space: space.Space | None = None  # the last measurement
        self.disk_short = False  # refusing for the disk (not the size limit)
        self._room = 0  # bytes of rows left before a limit, as of `space`
        self._checked_at = 0.0
        self._full_logged_at = 0.0

    def refuse(self, *, running: bool, waiting_to_open: bool) -> None:
        """Raise StoreFull while full, StoreUnavailable while the store is not open."""
        if not running:
            if waiting_to_open and self.full_reason is not None:
                raise StoreFull(self.full_reason)
            raise StoreUnavailable("the store is not open")
        if self.full_reason is not None:
            raise StoreFull(self.full_reason)

    def free_disk(self) -> int | None:
        """Free bytes on the store's disk (its nearest folder that exists), None if unknown."""
        for folder in (self.path.parent, *self.path.parent.parents):
            with contextlib.suppress(OSError):
                return self.disk_free(folder)
        return None

    def index_bytes(self) -> int:
        """The derived tables' file and its WAL: disk the store takes all the same."""
        main = self.index_path
        return sum(path.stat().st_size for path in (main, Path(f"{main}-wal")) if path.exists())

    def spent(self, conn: sqlite3.Connection, added: int) -> str | None:
        """Count `added` bytes of rows against the room left: a burst brings the next
        measurement forward. Returns what `check` returns."""
        self._room -= added
        return self.check(conn, force=self._room < 0)

    def check(self, conn: sqlite3.Connection | None, force: bool = False) -> str | None:
        """Measure and refuse or take writes accordingly; returns why it could not measure."""
        now = time.monotonic()
        if not force and now - self._checked_at < CHECK_EVERY_S:
            return None
        self._checked_at = now
        if conn is None:
            return None
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            measured = space.measure((pages - free_pages) * page_size + self.index_bytes(),
                                     pages, page_size, self.path, self.disk_free(self.path.parent))
        except (sqlite3.Error, OSError) as exc:
            return f"cannot measure the store: {exc}"
        self.space = measured
        # Rows written count down from it (`spent`).
        self._room = space.room(measured, self.budget.max_bytes, self.budget.min_free_bytes)
        short = space.short_of_disk(measured, self.budget.min_free_bytes)
        self.set_full(space.over_limit(measured, self.budget.max_bytes) or short,
                      disk=short is not None)
        return None

    def set_full(self, reason: str | None, *, disk: bool) -> None:
        """Refuse writes for `reason` (None: take them); say so when that changes, and say
        again what the store waits for every `FULL_LOG_EVERY_S` while it lasts."""
        was, self.full_reason, self.disk_short = self.full_reason, reason, disk
        self._pause(disk)
        now = time.monotonic()
        if reason is None:
            if was is not None:
                log.warning("the store takes writes again")
        elif was is None or now - self._full_logged_at >= FULL_LOG_EVERY_S:
            self._full_logged_at = now
            waiting = ("room on the disk (delete files, or grow it)" if disk
                       else "retention to free space")
            log.warning("the store refuses writes (503 store_full): %s; waiting for %s",
                        reason, waiting)
