"""A 2xx is a promise: kill -9 the receiver mid-traffic and every acknowledged event survives."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from receiver import ReceiverProcess

from ingest.sample import sample_events
from ingest.sender import request_for
from ingest.store import Reader
from ingest.testing import SECRET

pytestmark = pytest.mark.integration

EVENTS = 400
WORKERS = 6
KILL_AT_ACK = 120  # of the ~190 requests: the rest are in flight or not sent yet
JOIN_TIMEOUT_S = 60.0


@dataclass
class Batch:
    ids: list[str]
    events: list[bytes]
    ndjson: bool


@dataclass
class Traffic:
    """What the senders saw: the batches answered 2xx, their answers, transport failures."""

    acked: list[Batch] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def acked_ids(self) -> list[str]:
        return [event_id for batch in self.acked for event_id in batch.ids]


def make_batches(count: int, seed: int = 7) -> list[Batch]:
    """`count` distinct events as single events and small JSON-array or NDJSON batches."""
    rng = random.Random(seed)
    events = [orjson.dumps(e) for e in sample_events(count, seed=None)]
    batches: list[Batch] = []
    index = 0
    while index < count:
        size = rng.choice((1, 1, 1, 2, 3, 5))
        chunk = events[index:index + size]
        index += size
        batches.append(Batch([orjson.loads(e)["id"] for e in chunk], chunk,
                             ndjson=size > 1 and rng.random() < 0.5))
    return batches


def send_all(url: str, batches: Sequence[Batch], *, workers: int = WORKERS,
             on_ack: Callable[[int], None] | None = None) -> Traffic:
    """Post every batch from `workers` threads; `on_ack(n)` runs as the n-th 2xx arrives."""
    traffic = Traffic()
    todo = iter(batches)
    todo_lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        with httpx.Client(timeout=10.0) as client:
            while not stop.is_set():
                with todo_lock:
                    batch = next(todo, None)
                if batch is None:
                    return
                body, headers = request_for(batch.events, SECRET, ndjson=batch.ndjson)
                try:
                    response = client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    with traffic.lock:
                        traffic.failures[type(exc).__name__] += 1
                    stop.set()  # the receiver is gone: stop sending
                    continue
                with traffic.lock:
                    traffic.statuses[response.status_code] += 1
                    if not 200 <= response.status_code < 300:
                        continue
                    traffic.acked.append(batch)
                    traffic.answers.append(response.json())
                    acks = len(traffic.acked)
                    if on_ack:
                        on_ack(acks)

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        for future in futures:
            future.result(timeout=JOIN_TIMEOUT_S)
    return traffic


def test_acknowledged_events_survive_kill_9(
        start_receiver: Callable[..., ReceiverProcess]) -> None:
    receiver = start_receiver()
    batches = make_batches(EVENTS)
    all_ids = [event_id for batch in batches for event_id in batch.ids]
    assert len(set(all_ids)) == EVENTS
    assert len(batches) > KILL_AT_ACK + 2 * WORKERS

    def crash(acks: int) -> None:
        if acks == KILL_AT_ACK:
            receiver.kill()  # SIGKILL: no shutdown handler, no final flush

    first = send_all(receiver.webhook_url, batches, on_ack=crash)
    assert receiver.process is not None
    assert receiver.process.returncode == -9
    assert len(first.acked) >= KILL_AT_ACK
    assert len(first.acked) < len(batches), "the kill came after all traffic: nothing in flight"
    assert first.failures, "no request failed: the receiver was not killed mid-traffic"
    assert set(first.statuses) == {202}, first.statuses
    for batch, answer in zip(first.acked, first.answers, strict=True):
        assert answer == {"accepted": len(batch.ids), "duplicates": 0, "quarantined": 0}
    acked_ids = first.acked_ids

    again = start_receiver(data_dir=receiver.data_dir)
    reader = Reader(again.data_dir)
    try:
        # Every acknowledged id is there exactly once; nothing else is stored twice either.
        for event_id in acked_ids:
            found = reader.search(event_id=event_id, limit=5)
            assert [doc["id"] for doc in found] == [event_id]
        per_id = {event_id: len(reader.search(event_id=event_id, limit=5)) for event_id in all_ids}
        assert set(per_id.values()) <= {0, 1}
        stored_before = sum(per_id.values())
        counts = reader.counts()
        assert counts["pending"] == stored_before
        assert len(acked_ids) <= stored_before <= EVENTS
        assert counts["quarantined"] == 0

        # The relay retries everything: every answer is a 2xx, the stored ones as duplicates.
        second = send_all(again.webhook_url, batches)
        assert not second.failures, second.failures
        assert set(second.statuses) == {202}, second.statuses
        assert len(second.acked) == len(batches)
        assert sum(a["accepted"] for a in second.answers) == EVENTS - stored_before
        assert sum(a["duplicates"] for a in second.answers) == stored_before
        for batch, answer in zip(second.acked, second.answers, strict=True):
            was_stored = sum(per_id[event_id] for event_id in batch.ids)
            assert answer == {"accepted": len(batch.ids) - was_stored,
                              "duplicates": was_stored, "quarantined": 0}

        assert reader.counts()["pending"] == EVENTS
        for event_id in all_ids:
            assert len(reader.search(event_id=event_id, limit=5)) == 1
    finally:
        reader.close()
