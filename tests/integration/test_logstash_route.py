"""The Logstash route end to end: receiver -> store -> shipper -> an HTTP server on 127.0.0.1.

The server is a fault-injection stand-in for a Logstash `http` input (a test tool for the
retry and dead-letter rules, not a Logstash): it keeps documents by id and can answer 429,
refuse one event with 400, or check basic auth.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from receiver import ReceiverProcess, store_counts, wait_until

from ingest.sample import sample_events
from ingest.sender import request_for
from ingest.store import Reader
from ingest.testing import SECRET

pytestmark = pytest.mark.integration

USER, PASSWORD = "ingest", "ls-pass-0123"


class FakeHttpInput:
    """Fault-injection stand-in for a Logstash http input (basic auth, NDJSON)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.status_queue: list[int] = []
        self.reject: set[str] = set()
        self.requests = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                status = outer.answer(body, self.headers.get("authorization") == expected)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: bytes, authorised: bool) -> int:
        with self.lock:
            self.requests += 1
            if not authorised:
                return 401
            if self.status_queue:
                return self.status_queue.pop(0)
            docs = [orjson.loads(line) for line in body.splitlines() if line.strip()]
            if any(doc["id"] in self.reject for doc in docs):
                return 400
            for doc in docs:
                self.docs.setdefault(doc["id"], doc)  # create: the first one wins
            return 200


@pytest.fixture
def logstash() -> Iterator[FakeHttpInput]:
    fake = FakeHttpInput()
    yield fake
    fake.server.shutdown()






def test_events_reach_logstash_with_retries_and_dead_letters(
        tmp_path: Path, logstash: FakeHttpInput) -> None:
    events = list(sample_events(120, seed=21))
    ids = [str(e["id"]) for e in events]
    bad = ids[17]
    logstash.reject = {bad}
    logstash.status_queue = [429, 503, 429]
    data = tmp_path / "data"
    env = {"INGEST_SINK": "logstash", "INGEST_LOGSTASH_URL": logstash.url,
           "INGEST_LOGSTASH_USERNAME": USER, "INGEST_LOGSTASH_PASSWORD": PASSWORD,
           "INGEST_SHIP_BACKOFF_INITIAL": "20ms", "INGEST_SHIP_BACKOFF_MAX": "200ms",
           "INGEST_SHIP_IDLE_POLL": "20ms", "INGEST_SHIP_BATCH_DOCS": "25"}
    with ReceiverProcess(data, env=env) as server:
        for start in range(0, 120, 20):
            body, headers = request_for([orjson.dumps(e) for e in events[start:start + 20]],
                                        SECRET)
            assert httpx.post(server.webhook_url, content=body,
                              headers=headers).status_code == 202
        wait_until(lambda: store_counts(data)["pending"] == 0, 60, "the backlog to drain")
        log = server.log()
    assert set(logstash.docs) == set(ids) - {bad}
    assert all(doc["event"]["original"] for doc in logstash.docs.values())
    final = store_counts(data)
    assert final["shipped"] == len(ids) - 1 and final["dead"] == 1
    reader = Reader(data)
    letters = reader.dead_letters()
    reader.close()
    assert [(d["event_id"], d["status"]) for d in letters] == [(bad, 400)]
    assert PASSWORD not in log


def test_wrong_credentials_pause_without_losing_anything(
        tmp_path: Path, logstash: FakeHttpInput) -> None:
    data = tmp_path / "data"
    env = {"INGEST_LOGSTASH_URL": logstash.url, "INGEST_LOGSTASH_USERNAME": USER,
           "INGEST_LOGSTASH_PASSWORD": "wrong", "INGEST_SHIP_BACKOFF_INITIAL": "20ms",
           "INGEST_SHIP_BACKOFF_MAX": "100ms", "INGEST_SHIP_IDLE_POLL": "20ms"}
    events = list(sample_events(10, seed=22))
    with ReceiverProcess(data, env=env) as server:
        body, headers = request_for([orjson.dumps(e) for e in events], SECRET)
        assert httpx.post(server.webhook_url, content=body, headers=headers).status_code == 202
        wait_until(lambda: logstash.requests >= 3, 30, "retries against the refusal")
        ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "degraded" and "not authorised" in ready["sink"]["paused"]
    assert store_counts(data) == {"pending": 10, "shipped": 0, "dead": 0, "quarantined": 0}
    assert logstash.docs == {}
