"""A stand-in Elasticsearch that records what `holysheep-ingest setup` sends: a test tool.

It answers as an empty cluster would (every GET 404, every PUT acknowledged), so
`ElasticsearchSink.setup` sends every body it builds, exactly as the client serializes them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ingest.elastic import CLIENT_VERSION


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any


class _Server(ThreadingHTTPServer):
    seen: list[Request]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.server.seen.append(Request(self.command, self.path, body))

    def do_GET(self) -> None:
        self._record()
        if self.path == "/":
            self._answer(200, {"name": "recorder", "cluster_name": "recorder",
                               "version": {"number": CLIENT_VERSION},
                               "tagline": "You Know, for Search"})
            return
        self._answer(404, {"error": {"type": "resource_not_found_exception",
                                     "reason": f"{self.path} not found"}, "status": 404})

    def do_PUT(self) -> None:
        self._record()
        self._answer(200, {"acknowledged": True})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def recorder() -> Iterator[tuple[str, list[Request]]]:
    """(URL, requests seen so far) of a recorder on 127.0.0.1, stopped afterwards."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
