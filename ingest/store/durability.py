"""Durable commits off the event loop: WAL fsyncs on one thread, checkpoints on another."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

Done = Callable[[OSError | None], None]
# How much nicer than the rest of the process the checkpoint thread runs. It shares the core
# with the event loop: at equal priority a checkpoint (tens of ms of copying) halves the
# loop's share while it runs, and every request in flight waits longer. Lowered, it runs in
# the loop's idle time (the waits for WAL syncs) and still gets a share when the loop is
# busy, so the WAL stays bounded.
CHECKPOINT_NICE = 10
# Passes a checkpoint makes over what was written during the previous one, so that little is
# left for the writer's own pass on the loop (`tidy`). Only while each pass at least halves
# what is left: a checkpoint thread starved by a busy loop never catches up by itself, and
# its passes would only put off the WAL starting over (seconds, hundreds of MiB of WAL).
CHECKPOINT_PASSES = 4
TIDY_FRAMES = 64
# How long truncating the WAL after a full disk waits for its readers, holding the write lock.
RECOVER_WAIT_MS = 250
# How long a checkpoint waits for the WAL's other readers to finish a read, and they for the
# WAL to start over, before going ahead anyway.
READ_GATE_WAIT_S = 1.0


class ReadGate:
    """Keeps the WAL's other readers (the indexer) out while it can start over.

    The writer starts the WAL over at its first commit after a checkpoint copied all of
    it, and only if nobody reads from the WAL at that moment. A checkpoint closes the gate
    once it is done (new readers wait, the ones inside finish) and the writer opens it after
    that commit; a reader that waited `READ_GATE_WAIT_S` (a writer gone quiet) goes ahead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False
        self._closing = False  # so that a reader coming back at once cannot starve `close`

    def close(self) -> None:
        """Checkpoint thread: wait for the readers inside, then keep new ones out."""
        with self._cond:
            self._closing = True
            self._closed = self._cond.wait_for(lambda: self._inside == 0, READ_GATE_WAIT_S)
            self._closing = False
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            if self._closed:
                self._closed = False
                self._cond.notify_all()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Around each read transaction of another connection."""
        with self._cond:
            if not self._cond.wait_for(lambda: not (self._closed or self._closing),
                                       READ_GATE_WAIT_S):
                self._closed = False
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()


def background_priority() -> None:
    """Thread initializer: lower this thread's scheduling priority (Linux: per thread)."""
    if sys.platform == "linux":  # elsewhere the call would lower the whole process
        me = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, me,
                           min(19, os.getpriority(os.PRIO_PROCESS, me) + CHECKPOINT_NICE))


class Durability:
    """Runs `done` callbacks once everything committed before them is on disk.

    The writer commits with `synchronous=NORMAL` (the commit only writes WAL frames) and hands
    the fsync of the WAL file here, so the next group's inserts run while the disk syncs. One
    fsync covers every commit written before it started; at most one runs at a time.
    Checkpoints (copying the WAL back into the database) run on their own thread and
    connection, so neither the loop nor an acknowledgement waits for them. Such a checkpoint
    never catches up with a writer that keeps writing, and the WAL can only start over once
    one has: it goes over what was written meanwhile a few times, and `tidy` lets the writer
    copy the last few frames itself, between its commits.
    """

    def __init__(self, db_path: Path, *, full: bool, checkpoint_every_s: float = 1.0) -> None:
        self.full = full
        # Each checkpoint copies every page changed since the last: rarer is cheaper, while
        # the WAL (and page lookups in it) stays a few seconds of writes long.
        self.checkpoint_every_s = checkpoint_every_s
        self._db_path = db_path
        self._fd = os.open(f"{db_path}-wal", os.O_RDWR)
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="store-fsync")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="store-checkpoint",
                                                initializer=background_priority)
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpointing: Future[None] | None = None
        self._caught_up = False
        self.readers = ReadGate()
        self._restart_next = False
        self._waiting: list[Done] = []
        # The loop an fsync in flight reports to; one that ended never will.
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._checkpointed_at = time.monotonic()
        self.last_error: str | None = None
        self._recovery_error: str | None = None

    def committed(self, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        """A commit went into the WAL; call `done` once it is durable."""
        # Not while the WAL is about to start over: a checkpoint running at the next commit
        # would hold the lock that commit needs to restart it.
        if time.monotonic() - self._checkpointed_at >= self.checkpoint_every_s and \
                not (self._caught_up or self._restart_next):
            self._checkpoint()
        if not self.full:
            done(None)
            return
        self._waiting.append(done)
        if self._sync_loop is not loop:
            self._sync(loop)

    def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        self._sync_loop = loop
        syncing = loop.run_in_executor(self._syncer, self._fsync)
        syncing.add_done_callback(lambda done: self._synced(loop, batch, done.result()))

    def _fsync(self) -> OSError | None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            return exc
        return None

    def _synced(self, loop: asyncio.AbstractEventLoop, batch: list[Done],
                error: OSError | None) -> None:
        self._sync_loop = None
        if error is not None:
            self.last_error = f"fsync of the WAL failed: {error}"
        for done in batch:
            done(error)
        if self._waiting:
            self._sync(loop)

    def _checkpoint(self) -> None:
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._checkpointed_at = time.monotonic()
        self._checkpointing = self._checkpointer.submit(self._run_checkpoint)

    def _connection(self) -> sqlite3.Connection:
        """The checkpoint thread's own connection."""
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(self._db_path, isolation_level=None,
                                                    check_same_thread=False)
        return self._checkpoint_conn

    def _run_checkpoint(self) -> None:
        try:
            conn = self._connection()
            # PASSIVE: copies what no reader still needs and never blocks the writer.
            left = None
            for _ in range(CHECKPOINT_PASSES):
                _, log, copied = conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if log - copied <= TIDY_FRAMES or (left is not None and log - copied > left / 2):
                    break
                left = log - copied
        except sqlite3.Error as exc:
            self.last_error = f"checkpoint failed: {exc}"
        else:
            self.readers.close()
            self._caught_up = True

    def recover(self, loop: asyncio.AbstractEventLoop, done: Callable[[str | None], None]) -> None:
        """While the store takes no writes (its disk is short): copy the whole WAL into the
        database and truncate it, so its disk goes back to the file system; `done(None)` on
        the loop if so, else `done(why not)`. Nothing happens while a checkpoint runs."""
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._checkpointing = self._checkpointer.submit(self._run_recovery)
        self._checkpointing.add_done_callback(lambda _: self._report(loop, done))

    def _report(self, loop: asyncio.AbstractEventLoop, done: Callable[[str | None], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has ended: nobody is waiting
            loop.call_soon_threadsafe(done, self._recovery_error)

    def _run_recovery(self) -> None:
        self._recovery_error = None
        try:
            conn = self._connection()
            # PASSIVE first: TRUNCATE holds the write lock for as long as it copies.
            _, log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if log > copied:
                self._recovery_error = (f"{log - copied} of its {log} frames are still read "
                                        "from; trying again")
                return
            # It waits for readers holding the write lock: briefly, so the writer need not.
            conn.execute(f"PRAGMA busy_timeout={RECOVER_WAIT_MS}")
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            self._recovery_error = f"checkpoint failed: {exc}"
            return
        if busy:
            self._recovery_error = "the WAL is still read from, so it cannot be truncated yet"

    def tidy(self, conn: sqlite3.Connection) -> None:
        """After a commit, on the writer's connection: finish a background checkpoint.

        Only the frames written while it ran are left; copied with no write in progress,
        the WAL restarts from its beginning at the next write instead of growing.
        """
        if self._restart_next:  # the commit just made started the WAL over if it could
            self._restart_next = False
            self.readers.open()
        if not self._caught_up:
            return
        self._caught_up = False
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self.last_error = f"checkpoint failed: {exc}"
        self._restart_next = True

    def close(self) -> None:
        """Sync what is left and stop both threads (no loop needed)."""
        self._syncer.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)
        self.readers.open()
        error = self._fsync() if self.full else None
        for done in self._waiting:
            done(error)
        self._waiting = []
        if self._checkpoint_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._checkpoint_conn.close()
        os.close(self._fd)
