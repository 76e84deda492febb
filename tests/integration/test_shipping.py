"""Receiver -> store -> shipper -> fault-injection `_bulk` server, end to end, real processes.

The server is ingest.faults.FaultBulkServer: a test tool for retry logic, not an Elasticsearch
(the real-cluster suite is tests/elasticsearch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from faults import FaultBulkServer
from receiver import ReceiverProcess, store_counts, wait_until

from ingest.sample import sample_events
from ingest.sender import request_for
from ingest.store import Reader
from ingest.testing import SECRET

pytestmark = pytest.mark.integration

FAST = {
    "INGEST_SHIP_BACKOFF_INITIAL": "20ms",
    "INGEST_SHIP_BACKOFF_MAX": "300ms",
    "INGEST_SHIP_IDLE_POLL": "20ms",
    "INGEST_ELASTICSEARCH_TIMEOUT": "1s",
    "INGEST_SHIP_BATCH_DOCS": "50",
}


@pytest.fixture
def bulk_server() -> Iterator[FaultBulkServer]:
    with FaultBulkServer() as server:
        yield server


def receiver(data: Path, server: FaultBulkServer) -> ReceiverProcess:
    return ReceiverProcess(data, env={**FAST, "INGEST_ELASTICSEARCH_URL": server.url})


def post(url: str, events: list[dict[str, object]]) -> httpx.Response:
    import orjson

    body, headers = request_for([orjson.dumps(e) for e in events], SECRET)
    return httpx.post(url, content=body, headers=headers, timeout=10)






def test_every_accepted_event_is_indexed_once_or_dead_lettered(
        tmp_path: Path, bulk_server: FaultBulkServer) -> None:
    events = list(sample_events(300, seed=11))
    ids = [str(e["id"]) for e in events]
    rejected = set(ids[5:300:40])
    bulk_server.reject_ids(rejected, reason="failed to parse field [latency_ms] of type [float]")
    bulk_server.per_item_429(0.3, times=2)
    bulk_server.whole_status(503, times=3)
    bulk_server.lose_responses(2)
    data = tmp_path / "data"
    with receiver(data, bulk_server) as server:
        for start in range(0, 150, 10):
            assert post(server.webhook_url, events[start:start + 10]).status_code == 202
        # A cluster that refuses writes: shipping pauses, readiness says so, nothing is lost.
        bulk_server.cluster_block(True, kind="flood_stage")
        for start in range(150, 250, 10):
            assert post(server.webhook_url, events[start:start + 10]).status_code == 202
        wait_until(lambda: httpx.get(server.url + "/readyz").json()["status"] == "degraded", 20,
                   "readyz to report the block")
        assert store_counts(data)["dead"] <= len(rejected)
        bulk_server.cluster_block(False)
        # Down for a while, then back on the same address.
        bulk_server.down()
        for start in range(250, 300, 10):
            assert post(server.webhook_url, events[start:start + 10]).status_code == 202
        answer = post(server.webhook_url, events[0:10])  # the relay retrying a delivery
        assert answer.json() == {"accepted": 0, "duplicates": 10, "quarantined": 0}
        bulk_server.up()
        wait_until(lambda: store_counts(data)["pending"] == 0, 60, "every event to leave pending")
        ready = httpx.get(server.url + "/readyz").json()
        metrics = httpx.get(server.url + "/metrics").text

    assert set(bulk_server.docs) == set(ids) - rejected
    final = store_counts(data)
    assert final["shipped"] == len(ids) - len(rejected)
    assert final["dead"] == len(rejected)
    reader = Reader(data)
    letters = reader.dead_letters(limit=100)
    reader.close()
    assert {letter["event_id"] for letter in letters} == rejected
    assert all(letter["status"] == 400 and letter["error_type"] == "document_parsing_exception"
               and "latency_ms" in letter["reason"] for letter in letters)
    assert ready["status"] == "ready" and ready["sink"]["paused"] is None
    # Lost responses were re-sent and answered 409: counted as already there, not re-created.
    assert bulk_server.item_statuses[409] >= 1
    assert 'ingest_bulk_items_total{outcome="conflict"}' in metrics
    assert 'ingest_bulk_items_total{outcome="dead_lettered"} 8.0' in metrics


def test_a_crash_in_the_middle_of_shipping_loses_nothing(
        tmp_path: Path, bulk_server: FaultBulkServer) -> None:
    events = list(sample_events(400, seed=12))
    ids = {str(e["id"]) for e in events}
    data = tmp_path / "data"
    bulk_server.delay(0.2)
    first = receiver(data, bulk_server).start()
    try:
        for start in range(0, 400, 20):
            assert post(first.webhook_url, events[start:start + 20]).status_code == 202
        wait_until(lambda: len(bulk_server.docs) > 0, 20, "shipping to start")
        assert len(bulk_server.docs) < len(ids)
    finally:
        first.kill()
    bulk_server.delay(0)
    second = receiver(data, bulk_server).start()
    try:
        wait_until(lambda: store_counts(data)["pending"] == 0, 60,
                   "shipping to finish after restart")
    finally:
        second.stop()
    assert set(bulk_server.docs) == ids
    assert store_counts(data)["shipped"] == len(ids)


def test_dead_letters_replay_after_the_cause_is_fixed(
        tmp_path: Path, bulk_server: FaultBulkServer) -> None:
    import subprocess
    import sys

    events = list(sample_events(20, seed=13))
    bad = str(events[3]["id"])
    bulk_server.reject_ids({bad})
    data = tmp_path / "data"
    with receiver(data, bulk_server) as server:
        assert post(server.webhook_url, events).status_code == 202
        wait_until(lambda: (c := store_counts(data))["dead"] == 1 and c["pending"] == 0, 30,
                   "the dead letter")
        listed = subprocess.run([sys.executable, "-m", "ingest", "dlq", "list", "--json",
                                 "--data-dir", str(data)], capture_output=True, text=True,
                                timeout=60, check=True)
        assert bad in listed.stdout
        bulk_server.reset()  # the cause is fixed (the mapping, in real life)
        replay = subprocess.run([sys.executable, "-m", "ingest", "dlq", "replay", "--all",
                                 "--data-dir", str(data)], capture_output=True, text=True,
                                timeout=60, env={**server.env})
        assert replay.returncode == 0, replay.stderr
        wait_until(lambda: bad in bulk_server.docs, 30, "the replayed event to be indexed")
    assert store_counts(data)["dead"] == 0
    assert set(bulk_server.docs) == {str(e["id"]) for e in events}
