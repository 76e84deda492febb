"""The one policy for every remote (Elasticsearch, Logstash, Kibana): what is retried, redaction."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from ingest.errors import RemoteError, RemoteRefused, RemoteUnavailable

T = TypeVar("T")

# The authority's user information runs to its last `@` (a password may hold one unescaped).
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def retryable(status: int) -> bool:
    """Whether an HTTP status may pass if sent again later.

    429 (throttled), 408 (the server's own timeout) and every 5xx but 501 (Not Implemented:
    the request itself will never work). Timeouts and connection errors, which have no status,
    are always retried: see `timed_out` and `unreachable`.
    """
    return status in (408, 429) or (500 <= status <= 599 and status != 501)


def answer_error(doing: str, status: int, detail: str = "", *, credentials: str = "",
                 error_type: str | None = None) -> RemoteError:
    """The error for a non-2xx answer: RemoteUnavailable when retryable, else RemoteRefused.

    `credentials` names the settings to check when the answer is 401 or 403.
    """
    if retryable(status):
        return RemoteUnavailable(f"{doing}: HTTP {status}{_sep(detail)}", status,
                               error_type=error_type)
    if status in (401, 403) and credentials:
        said = f" ({detail})" if detail else ""
        return RemoteRefused(f"{doing}: HTTP {status}, not authorised: check {credentials}{said}",
                           status, error_type=error_type)
    return RemoteRefused(f"{doing}: HTTP {status}{_sep(detail)}", status, error_type=error_type)


def timed_out(doing: str, after: float | None = None) -> RemoteUnavailable:
    """A request that got no answer in time: always retried."""
    return RemoteUnavailable(f"{doing}: timed out" + (f" after {after:g}s" if after else ""))


def unreachable(doing: str, kind: str) -> RemoteUnavailable:
    """A connection that could not be made or broke (`kind`: the exception's name): retried."""
    return RemoteUnavailable(f"{doing}: cannot connect ({kind})")


def transport_error(doing: str, exc: httpx.HTTPError, after: float | None = None) -> RemoteError:
    """httpx's failures without an answer (Logstash, Kibana) under the same policy."""
    if isinstance(exc, httpx.TimeoutException):
        return timed_out(doing, after)
    return unreachable(doing, type(exc).__name__)


async def while_unavailable(call: Callable[[], Awaitable[T]], seconds: float,
                            pause: float = 2.0) -> T:
    """`call()`, tried again every `pause` while it raises RemoteUnavailable, for up to `seconds`
    (a cluster or Kibana that is still starting); then its last error is raised."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except RemoteUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(pause)


def redact(url: str) -> str:
    """The URL with any `user:password@` part replaced by `***@`, for messages and logs."""
    return _USERINFO.sub(r"\1***@", url)


def _sep(detail: str) -> str:
    return f" {detail}" if detail else ""
