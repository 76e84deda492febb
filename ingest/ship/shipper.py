"""The shipper: leases pending events, bulk-creates them, retries only what failed, with backoff."""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ingest.errors import RemoteError, RemoteRefused, RemoteUnavailable, StoreError, VersionMismatch
from ingest.records import DeadLetter, Outcome, Pending
from ingest.ship import bulk
from ingest.store import Reader, Store, mark_done

log = logging.getLogger("ingest.shipper")
_MIN_BATCH_BYTES = 64 * 1024


class Sink(Protocol):
    """Elasticsearch's bulk API or Logstash's http input: batches in, outcomes out."""

    url: str

    async def check_version(self) -> str: ...
    def chunks(self, items: Iterable[Pending], index: str, max_docs: int,
               max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]: ...
    async def send(self, items: list[Pending], body: bytes) -> Outcome: ...
    async def close(self) -> None: ...


@dataclass
class Stats:
    """Counters since start, for `/readyz`, logs and metrics."""

    indexed: int = 0
    conflicts: int = 0
    retried: int = 0
    dead_lettered: int = 0
    bulk_requests: int = 0
    bulk_failures: int = 0


class Shipper:
    """Ships the store's pending events to the sink until cancelled."""

    def __init__(
        self,
        store: Store,
        reader: Reader,
        sink: Sink,
        *,
        index: str,
        batch_docs: int = 1000,
        batch_bytes: int = 5_000_000,
        concurrency: int = 2,
        backoff_initial: float = 0.5,
        backoff_max: float = 60.0,
        idle_poll: float = 0.2,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_bulk: Callable[[Outcome | None, float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # `clock` stamps what is recorded; `monotonic` and `sleep` pace backoffs and polls
        # (a test passes virtual ones, so backoff is checked without waiting for it).
        self.store = store
        self.reader = reader
        self.sink = sink
        self.index = index
        self.batch_docs = batch_docs
        self.batch_bytes = batch_bytes
        self.concurrency = concurrency
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_poll = idle_poll
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_bulk = on_bulk
        self.monotonic = monotonic
        self.sleep = sleep
        self.stats = Stats()
        self.status = "starting"
        self.paused: str | None = None
        self.refused: RemoteRefused | None = None
        self.last_error: str | None = None
        self.server_version: str | None = None
        self._cursor = 0
        self._retry: list[tuple[float, int, Pending]] = []
        self._outstanding: set[int] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def up(self) -> bool:
        return self.status == "shipping" and self.paused is None

    async def run(self) -> None:
        """Check the server version (waiting while it is unreachable), then ship for ever."""
        await self._connect()
        try:
            while True:
                if not await self._ship_some():
                    await self.sleep(self._idle_delay())
        finally:
            for task in self._tasks:
                task.cancel()

    async def drain(self, timeout: float | None = None, give_up_on_refusal: bool = False) -> None:
        """Ship until nothing is pending or waiting for a retry (for `ship --once` and tests).

        `give_up_on_refusal`: raise the first RemoteRefused (credentials, a missing index)
        instead of waiting, paused, for its cause to be fixed.
        """
        await self._connect(give_up_on_refusal)
        deadline = None if timeout is None else self.monotonic() + timeout
        while True:
            if give_up_on_refusal and self.refused is not None and not self._tasks:
                # One-shot runs stop on a refusal (credentials, a missing index) with its reason.
                raise self.refused
            progressed = await self._ship_some()
            if not progressed and not self._tasks and not self._retry:
                self._rewind()
                if not self.reader.pending(self._cursor, 1):
                    return
            if deadline is not None and self.monotonic() > deadline:
                raise RemoteUnavailable("events still pending when the time ran out")
            if not progressed:
                await self.sleep(self._idle_delay())

    async def _connect(self, give_up_on_refusal: bool = False) -> None:
        attempt = 0
        while True:
            try:
                self.server_version = await self.sink.check_version()
                log.info("shipping to %s (%s), data stream %s",
                         self.sink.url, self.server_version, self.index)
                # Everything pending is ahead of the cursor, including rows a crash left behind.
                self._cursor = (self.reader.first_pending() or 1) - 1
                self.status = "shipping"
                return
            except VersionMismatch as exc:
                self.status = "stopped"
                self.last_error = exc.message
                raise
            except RemoteError as exc:
                if give_up_on_refusal and isinstance(exc, RemoteRefused):
                    raise
                self.status = "waiting for Elasticsearch"
                self.last_error = exc.message
                delay = bulk.backoff(attempt, self.backoff_initial, self.backoff_max, self.rng)
                log.warning("Elasticsearch not reachable (%s); retrying in %.1fs", exc.message,
                            delay)
                attempt += 1
                await self.sleep(max(delay, 0.05))

    def _idle_delay(self) -> float:
        if self._retry:
            return max(0.01, min(self.idle_poll, self._retry[0][0] - self.monotonic()))
        return self.idle_poll

    async def _ship_some(self) -> bool:
        """Send what is due now; False when there was nothing to send."""
        items = self._take()
        if not items:
            return False
        items, unsendable = bulk.unsendable(items)
        if unsendable:
            await self._finish(Outcome(dead=unsendable))
        for batch, body in self.sink.chunks(items, self.index, self.batch_docs,
                                            self.batch_bytes):
            await self._slots.acquire()
            task = asyncio.create_task(self._send(batch, body))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("shipping task failed: %r", task.exception())

    def _take(self) -> list[Pending]:
        now = self.monotonic()
        taken: list[Pending] = []
        while self._retry and self._retry[0][0] <= now and len(taken) < self.batch_docs:
            taken.append(heapq.heappop(self._retry)[2])
        # Nothing new while paused, and memory stays bounded while the cluster is slow.
        limit = self.concurrency * self.batch_docs * 2
        room = min(self.batch_docs - len(taken), limit - len(self._outstanding))
        if self.paused is None and room > 0:
            fresh = self.reader.pending(self._cursor, room)
            if fresh:
                self._cursor = fresh[-1].seq
                self._outstanding.update(item.seq for item in fresh)
                taken.extend(fresh)
            elif not self._outstanding:
                self._rewind()
        return taken

    def _rewind(self) -> None:
        """Events made pending again behind the cursor (a dead-letter replay) get picked up."""
        first = self.reader.first_pending()
        if first is not None and first <= self._cursor and first not in self._outstanding:
            self._cursor = first - 1

    async def _send(self, items: list[Pending], body: bytes) -> None:
        started = self.monotonic()
        self.stats.bulk_requests += 1
        outcome: Outcome | None = None
        try:
            outcome = await self.sink.send(items, body)
        except RemoteUnavailable as exc:
            self._failed(items, exc.message)
        except RemoteRefused as exc:
            await self._refused(items, exc)
        else:
            await self._finish(outcome)
        if self.on_bulk:
            self.on_bulk(outcome, self.monotonic() - started)

    async def _refused(self, items: list[Pending], exc: RemoteRefused) -> None:
        if exc.status == 413 and len(items) > 1:
            self.batch_bytes = max(_MIN_BATCH_BYTES, self.batch_bytes // 2)
            log.warning("bulk request too large; batches now up to %d bytes", self.batch_bytes)
            self._retry_later(items, immediately=True)
        elif exc.status == 413:
            await self._finish(Outcome(dead=[DeadLetter(
                items[0], 413, "request_entity_too_large", exc.message)]))
        else:
            # Credentials, a missing template, a closed index: nothing to retry quickly.
            self.paused = exc.message
            self.refused = exc
            self._failed(items, exc.message)

    def _failed(self, items: list[Pending], message: str) -> None:
        self.stats.bulk_failures += 1
        self.last_error = message
        log.warning("bulk request of %d events failed, will retry: %s", len(items), message)
        self._retry_later([bulk.again(item) for item in items])

    def _retry_later(self, items: list[Pending], immediately: bool = False) -> None:
        now = self.monotonic()
        for item in items:
            delay = 0.0 if immediately else bulk.backoff(
                item.attempts, self.backoff_initial, self.backoff_max, self.rng)
            heapq.heappush(self._retry, (now + delay, item.seq, item))

    async def _finish(self, outcome: Outcome) -> None:
        stats = self.stats
        stats.indexed += len(outcome.shipped) - outcome.conflicts
        stats.conflicts += outcome.conflicts
        stats.retried += len(outcome.retry)
        stats.dead_lettered += len(outcome.dead)
        if outcome.blocked:
            if self.paused is None:
                log.error("Elasticsearch refuses writes (%s); shipping paused, events stay "
                          "pending", outcome.blocked)
            self.paused = outcome.blocked
        elif outcome.shipped and self.paused is not None:
            log.info("Elasticsearch accepts writes again; shipping resumed")
            self.paused = None
            self.refused = None
        self._retry_later(outcome.retry)
        done = [item.seq for item in outcome.shipped] + [d.item.seq for d in outcome.dead]
        if not done:
            return
        now_ms = int(self.clock() * 1000)
        shipped = [item.seq for item in outcome.shipped]
        dead = outcome.dead
        try:
            await self.store.apply(mark_done(shipped, dead, self.index, now_ms))
        except StoreError as exc:
            # They stay pending in the store; a later run re-sends them and gets 409s.
            log.error("could not record shipping state: %s", exc.message)
        self._outstanding.difference_update(done)
        for letter in dead:
            log.warning("dead letter seq=%d id=%s: %s %s", letter.item.seq, letter.item.event_id,
                        letter.error_type, letter.reason)
