"""A stand-in for the relay's usage endpoint on 127.0.0.1, for tests: it answers whatever the
test sets (a status and body, or a stall past the poller's timeout) and records each request's
Authorization header. A test tool, not a model of the relay's API."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import orjson


class UsageServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status, self._body, self._stall = 200, b"{}", False
        self._release = threading.Event()
        self.authorizations: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.authorizations.append(self.headers.get("Authorization", ""))
                    stall, release = owner._stall, owner._release
                if stall:
                    release.wait(30)  # until the test moves on; the poller gave up long before
                with owner._lock:  # what is set now: a released stall answers like the rest
                    status, body = owner._status, owner._body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the poller timed out and closed the connection

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/usage"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, status: int = 200, body: bytes | dict[str, Any] = b"{}") -> None:
        """Answer `status` with `body` (a dict is sent as JSON) from now on."""
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        with self._lock:
            self._status, self._body, self._stall = status, raw, False
            self._release.set()  # stalled requests finish now
            self._release = threading.Event()

    def stall(self) -> None:
        """Hold every request without an answer until the next `answer` or `close`."""
        with self._lock:
            self._stall = True

    def requests(self) -> int:
        with self._lock:
            return len(self.authorizations)

    def __enter__(self) -> UsageServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
