"""A full store answers 503 + Retry-After, stays alive, and takes writes again after pruning."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson
import pytest
from receiver import ReceiverProcess

from ingest.sample import sample_events
from ingest.sender import request_for
from ingest.store import Reader
from ingest.testing import SECRET

pytestmark = pytest.mark.integration

RETENTION_S = 3.0
ENV = {
    # ~1 KiB per stored event: a few hundred events fill it, well under a second of traffic.
    # An empty store already takes ~150 kB (a 16 KiB page per table and index) and the search
    # tables' file and WAL up to ~100 kB more: a lower limit could never be got back under.
    "INGEST_MAX_STORE_BYTES": "400000",
    "INGEST_RETENTION": f"{RETENTION_S:g}s",
    "INGEST_DEDUP_WINDOW": "2s",
    "INGEST_HOUSEKEEPING": "200ms",
    "INGEST_RETRY_AFTER_S": "1",
}
BATCH = 10
MAX_BATCHES = 300  # 3000 events, far more than 400 kB hold
RECOVERY_DEADLINE_S = 30.0
POLL_S = 0.1


@dataclass
class Sent:
    ids: list[str]
    started_at: float  # wall clock before the request: the receiver stamps received_at after


def post_events(http: httpx.Client, url: str, count: int) -> tuple[httpx.Response, Sent]:
    events = [orjson.dumps(e) for e in sample_events(count)]
    body, headers = request_for(events, SECRET)
    sent = Sent([orjson.loads(e)["id"] for e in events], time.time())
    return http.post(url, content=body, headers=headers), sent


def test_full_store_refuses_with_503_then_recovers_after_pruning(
        start_receiver: Callable[..., ReceiverProcess]) -> None:
    receiver = start_receiver(env=ENV)
    assert receiver.process is not None
    with httpx.Client(timeout=10.0) as http:
        # Fill the store until it says so.
        acked: list[Sent] = []
        full: httpx.Response | None = None
        for _ in range(MAX_BATCHES):
            response, sent = post_events(http, receiver.webhook_url, BATCH)
            if response.status_code == 503:
                full = response
                break
            assert response.status_code == 202, response.text
            assert response.json() == {"accepted": BATCH, "duplicates": 0, "quarantined": 0}
            acked.append(sent)
        assert full is not None, f"no 503 after {MAX_BATCHES * BATCH} events"
        assert acked, "the very first batch was refused: the limit is too small for the test"
        assert full.headers["retry-after"] == "1"
        assert full.headers["content-type"].startswith("application/json")
        assert full.json()["error"] == "store_full"

        # Every event acknowledged before the 503 is stored, unless retention may have pruned
        # it already (sent more than RETENTION_S before the check finished).
        reader = Reader(receiver.data_dir)
        try:
            missing = [event_id for sent in acked for event_id in sent.ids
                       if len(reader.search(event_id=event_id, limit=2)) != 1]
            checked_until = time.time()
            counts = reader.counts()
        finally:
            reader.close()
        prunable = {event_id for sent in acked if sent.started_at <= checked_until - RETENTION_S
                    for event_id in sent.ids}
        assert len(prunable) < len(acked) * BATCH, "too slow to check anything before pruning"
        assert set(missing) <= prunable, "acknowledged events are missing before pruning"
        assert counts["pending"] <= len(acked) * BATCH

        # Full is not dead: alive, healthy, not ready, still refusing with 503.
        assert receiver.process.poll() is None
        assert http.get(receiver.url + "/healthz").status_code == 200
        ready = http.get(receiver.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "store_full"
        assert ready.headers["retry-after"] == "1"

        # Retention pruning frees space: a send eventually succeeds, as a retrying relay's would.
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        refused = 0
        while True:
            response, sent = post_events(http, receiver.webhook_url, 1)
            if response.status_code != 503:
                break
            refused += 1
            assert response.json()["error"] == "store_full"
            assert response.headers["retry-after"] == "1"
            assert receiver.process.poll() is None, "receiver died while full"
            assert http.get(receiver.url + "/healthz").status_code == 200
            assert time.monotonic() < deadline, "store still full after retention pruning"
            time.sleep(POLL_S)  # polling for recovery, bounded by the deadline
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
        assert http.get(receiver.url + "/readyz").status_code == 200

        metrics = http.get(receiver.url + "/metrics").text
        expected = 'ingest_webhooks_total{outcome="overloaded",reason="store_full"}'
        assert f"{expected} {1 + refused:.1f}" in metrics

    reader = Reader(receiver.data_dir)
    try:
        assert len(reader.search(event_id=sent.ids[0], limit=2)) == 1
        after = reader.counts()
        # Pruning removed old events, so the store is smaller than when it was full.
        assert after["pending"] < counts["pending"]
    finally:
        reader.close()
    assert receiver.process.poll() is None
