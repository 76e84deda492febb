"""The relay's usage endpoint: a pure parser of its answer, and the poller feeding the quota."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from ingest import __version__

log = logging.getLogger("ingest.relay_usage")

# Every reason a poll can fail with: the whole label set of the failures counter.
REASONS = (
    "timeout",               # no complete answer within the poll timeout
    "connection",            # refused, reset, DNS, TLS, a broken HTTP exchange
    "unauthorized",          # 401 or 403: the API key is wrong, revoked or lacks the right
    "http_status",           # any other answer than 2xx (redirects are not followed)
    "too_large",             # an answer over MAX_ANSWER_BYTES
    "malformed_json",        # not JSON, or not a JSON object at the top
    "missing_field",         # a configured field is not in the answer
    "not_a_number",          # a field holds something other than a finite number
    "negative",              # a negative remaining or total
    "remaining_over_total",  # more remaining than the total
    "error",                 # a fault of the poller itself: logged by type, never a crash
)
MAX_ANSWER_BYTES = 1 << 20
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


@dataclass(frozen=True)
class Usage:
    remaining: float
    total: float


@dataclass(frozen=True)
class Failure:
    reason: str  # one of REASONS
    detail: str  # for the log: never the API key, never the answer's content


def field_path(text: str) -> tuple[str, ...]:
    """`data.remaining` -> ("data", "remaining")."""
    return tuple(text.split("."))


def parse_usage(body: bytes, remaining: Sequence[str], total: Sequence[str]) -> Usage | Failure:
    """The usage endpoint's answer -> Usage, or the Failure saying what is wrong with it.

    Numbers may come as JSON numbers or as decimal strings ("1234.5"), as billing APIs often
    send amounts; booleans, NaN, infinities and anything else are not numbers.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Failure("malformed_json", "the answer is not JSON")
    if not isinstance(document, dict):
        return Failure("malformed_json", f"the answer is a JSON {_kind(document)}, not an object")
    values: list[float] = []
    for path in (remaining, total):
        name = ".".join(path)
        found, value = _lookup(document, path)
        if not found:
            return Failure("missing_field", f"no field {name!r} in the answer")
        number = _number(value)
        if number is None:
            return Failure("not_a_number", f"field {name!r} is a {_kind(value)}, not a number")
        if number < 0:
            return Failure("negative", f"field {name!r} is negative")
        values.append(number)
    if values[0] > values[1]:
        return Failure("remaining_over_total", "remaining is larger than total")
    return Usage(values[0], values[1])


def _lookup(document: Any, path: Sequence[str]) -> tuple[bool, Any]:
    value = document
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _number(value: Any) -> float | None:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not (numeric or (isinstance(value, str) and _NUMBER.fullmatch(value))):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def redact(url: str) -> str:
    """Scheme, host, port and path only: user info and query strings may hold credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _QuietPolls(logging.Filter):
    """Drops httpx's own line per request for the usage URL: one line a minute, with the URL's
    query string, would bury the once-per-change warnings (other clients' lines stay)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = httpx.URL(url)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, httpx.URL) and arg == self.url for arg in args)


class QuotaSink(Protocol):
    def succeeded(self, remaining: float, total: float, at: float) -> None: ...

    def failed(self, reason: str) -> None: ...


class UsagePoller:
    """Polls the usage endpoint every `interval_s` and feeds `sink`; never raises out of a poll.

    One poll at a time, each bounded by `timeout_s` as a whole (a server dribbling bytes
    cannot hold it longer), started every `interval_s` on the injected `clock`. A failure is
    counted by reason and logged once per change of state (a new reason, or the recovery);
    the sink keeps the last good values.
    """

    def __init__(self, url: str, api_key: str, *, remaining_field: str, total_field: str,
                 interval_s: float, timeout_s: float, sink: QuotaSink,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.url, self.shown = url, redact(url)
        self.remaining_path, self.total_path = field_path(remaining_field), field_path(total_field)
        self.interval_s = interval_s
        self.timeout_s = min(timeout_s, interval_s)  # a poll never overlaps the next
        self.sink, self.clock, self.sleep = sink, clock, sleep
        self.client = httpx.AsyncClient(
            transport=transport, timeout=self.timeout_s, follow_redirects=False,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                     "User-Agent": f"holysheep-ingest/{__version__}"})
        self._quiet = _QuietPolls(url)
        logging.getLogger("httpx").addFilter(self._quiet)
        self.state: str | None = None  # None before the first poll, "ok", or the last reason
        self.known = False  # a good answer was seen: the sink holds values
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> Usage | Failure:
        """One poll: the sink and the log are told, the outcome returned."""
        try:
            outcome = await asyncio.wait_for(self._fetch(), self.timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            outcome = Failure("timeout", f"no answer within {self.timeout_s:g} s")
        except httpx.DecodingError:
            outcome = Failure("malformed_json", "the answer's content encoding is broken")
        except httpx.HTTPError as exc:  # the message may carry the URL: only the type is shown
            outcome = Failure("connection", f"cannot reach it ({type(exc).__name__})")
        except Exception as exc:  # a poll must never take the receiver down
            outcome = Failure("error", f"unexpected {type(exc).__name__}")
        self._record(outcome)
        return outcome

    async def _fetch(self) -> Usage | Failure:
        async with self.client.stream("GET", self.url) as response:
            status = response.status_code
            if status in (401, 403):
                return Failure("unauthorized", f"HTTP {status}: check INGEST_RELAY_API_KEY")
            if not 200 <= status < 300:
                return Failure("http_status", f"HTTP {status}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    return Failure("too_large", f"the answer is over {MAX_ANSWER_BYTES} bytes")
        return parse_usage(bytes(body), self.remaining_path, self.total_path)

    def _record(self, outcome: Usage | Failure) -> None:
        before = self.state
        if isinstance(outcome, Usage):
            self.sink.succeeded(outcome.remaining, outcome.total, self.clock())
            self.state, self.known = "ok", True
            # 15 significant digits: 12345678 stays 12345678, 12.5 stays 12.5.
            left, total = f"{outcome.remaining:.15g}", f"{outcome.total:.15g}"
            if before is None:
                log.info("relay quota from %s: %s of %s remaining", self.shown, left, total)
            elif before != "ok":
                log.warning("relay usage poll of %s works again: %s of %s remaining",
                            self.shown, left, total)
            return
        self.sink.failed(outcome.reason)
        self.state = outcome.reason
        if before != outcome.reason:
            kept = "keeping the last good values" if self.known else "no quota known yet"
            log.warning("relay usage poll of %s failed (%s): %s; %s", self.shown,
                        outcome.reason, outcome.detail, kept)

    async def run(self) -> None:
        """Poll until cancelled, one poll every interval (at once when a poll took longer)."""
        while True:
            started = self.clock()
            await self.poll()
            # Clamped: a wall clock set back must not stall the polls for as long.
            wait = min(self.interval_s, max(0.0, started + self.interval_s - self.clock()))
            await self.sleep(wait)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="relay-usage")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.aclose()
        logging.getLogger("httpx").removeFilter(self._quiet)
