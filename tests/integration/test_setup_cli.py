"""`holysheep-ingest setup` refuses clearly: unreachable, unauthorised, another major version."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
from faults import FaultBulkServer
from receiver import free_port, store_counts

pytestmark = pytest.mark.integration


def setup(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", "setup"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "INGEST_WEBHOOK_SECRET": "x", "INGEST_ELASTICSEARCH_URL": url, **env})


def test_unreachable_cluster() -> None:
    done = setup(f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "cannot connect" in done.stderr and "Traceback" not in done.stderr


def test_another_major_version_names_both_and_the_fix() -> None:
    with FaultBulkServer(version="8.15.0") as server:
        done = setup(server.url)
    assert done.returncode == 1
    assert "8.15.0" in done.stderr and "elasticsearch>=8,<9" in done.stderr


def test_refused_credentials_never_echo_the_password() -> None:
    class Refuse(BaseHTTPRequestHandler):
        """Answers like a secured cluster given wrong credentials."""

        def do_GET(self) -> None:
            body = b'{"error":{"type":"security_exception","reason":"unable to authenticate"}}'
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = setup(f"http://127.0.0.1:{server.server_address[1]}",
                     INGEST_ELASTICSEARCH_USERNAME="elastic",
                     INGEST_ELASTICSEARCH_PASSWORD="pw-s3cret")
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert "not authorised" in done.stderr and "INGEST_ELASTICSEARCH_API_KEY" in done.stderr
    assert "pw-s3cret" not in done.stderr + done.stdout


def test_ship_once_stops_on_a_refusal_with_its_reason(tmp_path: Path) -> None:
    from receiver import ReceiverProcess

    from ingest.sample import sample_events
    from ingest.sender import request_for
    from ingest.testing import SECRET

    data = tmp_path / "data"
    with ReceiverProcess(data) as server:  # no sink: events stay pending in the store
        body, headers = request_for([orjson.dumps(e) for e in sample_events(5, seed=3)],
                                    SECRET)
        assert httpx.post(server.webhook_url, content=body, headers=headers).status_code == 202
    with FaultBulkServer() as fault:
        fault.whole_status(401, times=None)
        done = subprocess.run(
            [sys.executable, "-m", "ingest", "ship", "--once", "--data-dir", str(data)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "INGEST_WEBHOOK_SECRET": "x", "INGEST_ELASTICSEARCH_URL": fault.url,
                 "INGEST_SHIP_BACKOFF_INITIAL": "10ms", "INGEST_MIN_FREE_DISK_BYTES": "0"})
    assert done.returncode == 1, done.stderr
    assert "not authorised" in done.stderr
    assert store_counts(data)["pending"] == 5  # nothing lost, nothing marked
