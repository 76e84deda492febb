"""A fault-injection `_bulk` server: a test tool for retry logic, not an Elasticsearch."""

from __future__ import annotations

import base64
import contextlib
import errno
import gzip
import hashlib
import json
import math
import os
import re
import socket
import socketserver
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "BlockKind",
    "BulkItem",
    "DownMode",
    "FaultBulkServer",
    "FieldType",
    "ItemPredicate",
]

HOST: Final = "127.0.0.1"
MAX_ID_BYTES: Final = 512  # IndexRequest.MAX_DOCUMENT_ID_LENGTH_IN_BYTES
ACTIONS: Final = ("create", "index", "update", "delete")
BlockKind = Literal["write", "read_only", "flood_stage"]
DownMode = Literal["refuse", "reset"]
FieldType = Literal["float", "double", "half_float", "scaled_float", "long", "integer", "short",
                    "byte", "unsigned_long", "boolean", "keyword"]

# How Elasticsearch words its index blocks: (HTTP status of each item, block description).
_BLOCKS: Final[dict[str, tuple[int, str]]] = {
    "write": (403, "FORBIDDEN/8/index write (api)"),
    "read_only": (403, "FORBIDDEN/5/index read-only (api)"),
    "flood_stage": (429, "TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, "
                         "index has read-only-allow-delete block"),
}
_WHOLE_DEFAULTS: Final[dict[int, tuple[str, str]]] = {
    429: ("es_rejected_execution_exception",
          "rejected execution of coordinating operation [fault injection]"),
    502: ("fault_injection_exception", "bad gateway (fault injection)"),
    503: ("cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master];"),
    504: ("fault_injection_exception", "gateway timeout (fault injection)"),
}
_NUMERIC: Final = frozenset({"float", "double", "half_float", "scaled_float", "long", "integer",
                             "short", "byte", "unsigned_long"})
_BULK_PATH: Final = re.compile(r"^/(?:(?P<index>[^/_][^/]*)/)?_bulk/?$")
_COMPAT: Final = re.compile(r"compatible-with\s*=\s*(\d+)")
# The built-in data stream templates: `logs-*-*`, `metrics-*-*`, `traces-*-*`, `synthetics-*-*`.
_DATA_STREAM: Final = re.compile(r"^(?:logs|metrics|traces|synthetics)-[^-]+-[^-]+$")


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One action of a bulk request, as the predicates of the scripted faults see it."""

    action: str                      # "create", "index", "update" or "delete"
    index: str                       # the target as named (data stream or index)
    id: str                          # `_id`; generated when the action line had none
    source: dict[str, Any] | None    # the parsed source line; None for delete or unparsable
    line: int                        # 1-based line of the action in the NDJSON body


ItemPredicate = Callable[[BulkItem], bool]
Reply = tuple[int, bytes]            # HTTP status and JSON body; None instead means "hang up"


class _BadRequest(Exception):
    def __init__(self, status: int, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.reply: Reply = (status, _dumps(_error_body(status, error_type, reason)))


class _HookError(Exception):
    pass


@dataclass(slots=True)
class _Op:
    action: str
    meta: dict[str, Any]
    line: int
    raw: bytes = b""
    source: dict[str, Any] | None = None
    source_error: str | None = None


@dataclass(slots=True)
class _Throttle:
    match: ItemPredicate
    times: int | None
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Reject:
    match: ItemPredicate
    status: int
    error_type: str
    reason: str | None


@dataclass(slots=True)
class _Whole:
    status: int
    remaining: int | None
    error_type: str
    reason: str


class FaultBulkServer:
    """A scripted HTTP server on 127.0.0.1 that answers `_bulk` the way Elasticsearch does.

    A test tool for retry logic, not an Elasticsearch: it speaks just enough of the REST
    protocol for the official client (`GET /`, `HEAD /`, `POST|PUT [/<index>]/_bulk`), keeps
    accepted documents in `docs` (keyed by `_id` across all targets) and answers every item
    with the status, `result` and error JSON that Elasticsearch would give. Faults are scripted
    from the test at any time, thread-safely:

    * `per_item_429(match, times)`  chosen items answer 429 `es_rejected_execution_exception`
      the first `times` times they are seen (not stored);
    * `whole_status(status, times)` the next `times` bulk requests answer `status` as a whole;
    * `delay(seconds)`              every bulk waits first (the work is still done afterwards,
      as Elasticsearch does for a client that timed out: see `wait_idle()`);
    * `reject_ids(ids)` / `reject_where(predicate)`  permanent per-item errors (400 by default);
    * `mapping_conflict(field, es_type)`  a value that cannot be `es_type` answers 400
      `document_parsing_exception`, worded as Elasticsearch words it;
    * `cluster_block(on, kind=...)`  every item answers the index block's 403 (or 429 for the
      flood-stage block, which still lets deletes through);
    * `lose_responses(times)`       the next bulks are applied, then the connection is closed
      without an answer (the response is lost: a retry of a `create` then meets 409);
    * `down(mode)` / `up()`         see `down()`;
    * `failure_store(on)`           a data stream's failure store: items refused with
      `document_parsing_exception` answer 201 `failure_store: used` and go to `failure_docs`;
    * `refuse_requests_with(ids)`   any bulk request holding one of these ids answers 400 as a
      whole (nothing stored), as Elasticsearch does for an item that fails its request-level
      validation; an `_id` over 512 bytes of UTF-8 always does, with Elasticsearch's wording.

    Per item the checks run in this order: data stream rules, index block, 429, unparsable
    source, rejections, mappings, data stream `@timestamp`, then the store (409 on a `create`
    whose `_id` exists). Every response carries `X-Elastic-Product: Elasticsearch` and
    `Content-Type: application/json`. Requests whose `Accept`/`Content-Type` ask for a
    `compatible-with` major other than the server's or the one before answer 400
    `media_type_header_exception`, like a real cluster of `version`.
    With `data_streams=True`, targets named like `logs-*-*` behave as data streams: `_index`
    in the answers is a `.ds-...-000001` backing index, only `create` is allowed and documents
    need `@timestamp`.
    """

    def __init__(self, *, version: str = "9.1.0", data_streams: bool = False,
                 log_size: int = 10_000) -> None:
        self.version = version
        self.data_streams = data_streams
        self.product_header = True
        self.docs: dict[str, dict[str, Any]] = {}
        self.failure_docs: list[dict[str, Any]] = []
        self.bulk_requests = 0
        self.items_seen = 0
        self.item_statuses: Counter[int] = Counter()
        self.hook_errors: list[str] = []
        self._log: deque[tuple[str, str, int]] = deque(maxlen=log_size)
        self._versions: dict[str, int] = {}
        self._seq_no = 0
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._life = threading.Lock()
        self._stopped = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._epoch = 0
        self._down: DownMode | None = None
        self._started_day = datetime.now(UTC).strftime("%Y.%m.%d")
        self._throttles: list[_Throttle] = []
        self._rejects: list[_Reject] = []
        self._fields: dict[str, str] = {}
        self._whole: _Whole | None = None
        self._delay = 0.0
        self._block: str | None = None
        self._lose = 0
        self._failure_store = False
        self._refusing: dict[str, tuple[str, str | None]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on 127.0.0.1 on a free port, serving from a daemon thread."""
        with self._life:
            if self._httpd is not None or self._port:
                raise RuntimeError("FaultBulkServer.start() called twice")
            self._stopped.clear()
            self._bind(0)
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; delayed requests are abandoned."""
        with self._life:
            self._stopped.set()
            with self._idle:
                self._epoch += 1
                self._idle.notify_all()
            self._unbind()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FaultBulkServer is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- scripted faults -------------------------------------------------------------------

    def per_item_429(self, match: Iterable[str] | ItemPredicate | float,
                     times: int | None = 1, *, seed: int = 0) -> None:
        """Matching items answer 429 `es_rejected_execution_exception` (not stored) the first
        `times` times each `_id` is seen (None: until `reset()`).

        `match` is a set of ids, a predicate over `BulkItem`, or a probability: an id is then
        chosen when a hash of (`seed`, id) falls under it, whatever the order of arrival.
        Several calls add several rules; the first that rejects an item wins."""
        rule = _Throttle(_matcher(match, seed), times)
        with self._lock:
            self._throttles.append(rule)

    def whole_status(self, status: int, times: int | None = 1, *, error_type: str | None = None,
                     reason: str | None = None) -> None:
        """The next `times` bulk requests (None: until `reset()`) answer `status` as a whole,
        with an Elasticsearch error body (`{"error": {"root_cause", "type", "reason"},
        "status"}`); nothing is stored. A new call replaces the previous one."""
        default_type, default_reason = _WHOLE_DEFAULTS.get(
            status, ("fault_injection_exception", f"status {status} (fault injection)"))
        with self._lock:
            self._whole = None if times is not None and times <= 0 else _Whole(
                status, times, error_type or default_type, reason or default_reason)

    def delay(self, seconds: float) -> None:
        """Wait `seconds` before handling each bulk request (0 turns it off)."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def reject_ids(self, ids: Iterable[str], status: int = 400,
                   error_type: str = "document_parsing_exception",
                   reason: str | None = None) -> None:
        """Items with these ids always answer `status` with this error (never stored)."""
        self.reject_where(_matcher(ids, 0), status, error_type, reason)

    def reject_where(self, predicate: ItemPredicate, status: int = 400,
                     error_type: str = "document_parsing_exception",
                     reason: str | None = None) -> None:
        """Items the predicate picks always answer `status` with this error (never stored).
        The default reason is `[1:1] failed to parse: rejected by fault injection`."""
        with self._lock:
            self._rejects.append(_Reject(predicate, status, error_type, reason))

    def mapping_conflict(self, field: str, es_type: FieldType = "float") -> None:
        """Map `field` (dotted paths reach into objects) as `es_type`: a value that type cannot
        hold even with Elasticsearch's default coercion (numeric strings are fine for numbers)
        answers 400 `document_parsing_exception`: "[1:27] failed to parse field [latency_ms] of
        type [float] in document with id '...'. Preview of field's value: '...'"."""
        if es_type not in _NUMERIC and es_type not in ("boolean", "keyword"):
            raise ValueError(f"unsupported field type {es_type!r}")
        with self._lock:
            self._fields[field] = es_type

    def cluster_block(self, on: bool = True, *, kind: BlockKind = "write") -> None:
        """While on, every item answers `cluster_block_exception` with the real wording:
        "index [i] blocked by: [FORBIDDEN/8/index write (api)];" (403) for `write`,
        `[FORBIDDEN/5/index read-only (api)]` (403) for `read_only`, or for `flood_stage`
        `[TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has
        read-only-allow-delete block]` (429, as Elasticsearch answers since 7.x; deletes pass)."""
        if kind not in _BLOCKS:
            raise ValueError(f"unknown block kind {kind!r}")
        with self._lock:
            self._block = kind if on else None

    def refuse_requests_with(self, ids: Iterable[str],
                             error_type: str = "action_request_validation_exception",
                             reason: str | None = None) -> None:
        """A bulk request holding any of these `_id`s answers 400 as a whole with this error
        (`Validation Failed: 1: ...;` by default, naming the item); nothing in it is stored.
        Another call adds to the ids; `reset()` clears them."""
        with self._lock:
            for doc_id in ids:
                self._refusing[doc_id] = (error_type, reason)

    def failure_store(self, on: bool = True) -> None:
        """While on, an item that would fail with `document_parsing_exception` (a mapping
        conflict, an unparsable source, a rejection of that type, a missing `@timestamp`) is
        kept in the target's failure store instead, as Elasticsearch 9.1+ does: the item
        answers 201 `created` with `failure_store: used` and an `_index` of `.fs-<target>-...`
        (a new `_id`), and the failure document (`document.id`, `document.source`, `error`) is
        appended to `failure_docs`. Throttling, conflicts and blocks are answered as ever."""
        with self._lock:
            self._failure_store = on

    def lose_responses(self, times: int = 1) -> None:
        """The next `times` bulk requests are applied, then the connection is closed without
        an answer: the client sees a connection error although the documents are stored."""
        with self._lock:
            self._lose = times

    def down(self, mode: DownMode = "refuse") -> None:
        """Take the server down until `up()`.

        `refuse` (default): the listening socket is closed and every open connection is shut
        down, so new connections are refused (`httpx.ConnectError`) and pooled keep-alive ones
        see EOF; requests in flight are abandoned unanswered. `up()` binds the same port again
        (SO_REUSEADDR), so `url` stays valid.
        `reset`: the listener stays up, but each request is read and the connection is closed
        without an answer (`httpx.RemoteProtocolError`), like a proxy whose node is gone.
        Either way the official client raises `elasticsearch.ConnectionError`."""
        with self._life:
            if not self._port or self._stopped.is_set():
                raise RuntimeError("FaultBulkServer is not running")
            with self._idle:
                self._down = mode
                self._epoch += 1
            if mode == "refuse":
                self._unbind()
            elif self._httpd is None:  # from refuse to reset: listen again
                self._bind(self._port)

    def up(self) -> None:
        """Serve again on the same port after `down()`."""
        with self._life:
            if self._down == "refuse" and not self._stopped.is_set():
                self._bind(self._port)
            with self._lock:
                self._down = None

    @property
    def is_down(self) -> bool:
        return self._down is not None

    def reset(self) -> None:
        """Clear every scripted fault (and `up()` if down); documents and counters stay."""
        self.up()
        with self._lock:
            self._clear_faults()

    def clear(self) -> None:
        """`reset()`, then forget the documents, counters, log and hook errors too."""
        self.reset()
        with self._lock:
            self.docs.clear()
            self.failure_docs.clear()
            self._versions.clear()
            self._seq_no = 0
            self.bulk_requests = 0
            self.items_seen = 0
            self.item_statuses.clear()
            self.hook_errors.clear()
            self._log.clear()

    # -- observation -------------------------------------------------------------------------

    @property
    def requests_log(self) -> list[tuple[str, str, int]]:
        """(method, path, item count) of the latest requests (bounded by `log_size`)."""
        with self._lock:
            return list(self._log)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A copy of `docs` taken under the lock (safe while requests are in flight)."""
        with self._lock:
            return dict(self.docs)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no bulk request is being handled (a delayed one whose client gave up is
        still applied afterwards); False if that took longer than `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # -- internals: sockets ------------------------------------------------------------------

    def _bind(self, port: int) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                httpd = _HTTPServer((HOST, port), self)
            except OSError as exc:
                if port and exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise
            break
        self._httpd = httpd
        self._port = httpd.server_port
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fault-bulk-{self._port}", daemon=True)
        self._thread.start()

    def _unbind(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if thread is not None:
            thread.join(timeout=5.0)

    # -- internals: requests -----------------------------------------------------------------

    def _clear_faults(self) -> None:
        self._throttles = []
        self._rejects = []
        self._fields = {}
        self._whole = None
        self._delay = 0.0
        self._block = None
        self._lose = 0
        self._failure_store = False
        self._refusing = {}

    def _hang_up(self) -> bool:
        return self._down is not None or self._stopped.is_set()

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> Reply | None:
        """Answer one request: (status, JSON body), or None to close without answering."""
        if self._hang_up():
            return None
        url = urlsplit(target)
        path = url.path
        bulk = _BULK_PATH.match(path)
        refused = self._compat_error(headers)
        if bulk is None or refused is not None or method not in ("POST", "PUT"):
            with self._lock:
                self._log.append((method, path, 0))
                if bulk is not None:
                    self.bulk_requests += 1
            if refused is not None:
                return refused
            if bulk is not None:
                return 405, _dumps({"error": f"Incorrect HTTP method for uri [{target}] and "
                                             f"method [{method}], allowed: [POST, PUT]",
                                    "status": 405})
            if path == "/" and method in ("GET", "HEAD"):
                return 200, _dumps(self._info())
            return 400, _dumps({"error": f"no handler found for uri [{target}] and method "
                                         f"[{method}] (fault-injection server: only /, /_bulk)",
                                "status": 400})
        index = unquote(bulk["index"]) if bulk["index"] else None
        return self._bulk(method, path, index, parse_qs(url.query), body)

    def _info(self) -> dict[str, Any]:
        return {"name": "fault-injection", "cluster_name": "fault-injection",
                "cluster_uuid": "fault-injection-000000",
                "version": {"number": self.version, "build_flavor": "default",
                            "build_type": "fault-injection", "build_snapshot": False},
                "tagline": "You Know, for Search"}

    def _compat_error(self, headers: Message) -> Reply | None:
        try:
            major = int(self.version.split(".")[0])
        except ValueError:
            return None
        for name in ("Accept", "Content-Type"):
            value = headers.get(name)
            found = _COMPAT.search(value) if value else None
            if found and int(found[1]) not in (major, major - 1):
                cause = (f"{name} version must be either version {major} or {major - 1}, but "
                         f"found {found[1]}. {name}={value}")
                body = _error_body(400, "media_type_header_exception",
                                   "Invalid media-type value on headers [Accept, Content-Type]",
                                   {"type": "status_exception", "reason": cause})
                return 400, _dumps(body)
        return None

    def _bulk(self, method: str, path: str, path_index: str | None,
              query: dict[str, list[str]], body: bytes) -> Reply | None:
        try:
            ops = _parse_bulk(body)
        except _BadRequest as exc:
            with self._lock:
                self.bulk_requests += 1
                self._log.append((method, path, 0))
            return exc.reply
        with self._lock:
            self.bulk_requests += 1
            self.items_seen += len(ops)
            self._log.append((method, path, len(ops)))
            self._in_flight += 1
            delay, epoch = self._delay, self._epoch
        try:
            if delay and self._stopped.wait(delay):
                return None
            with self._lock:
                if self._hang_up() or epoch != self._epoch:
                    return None
                whole = self._whole
                if whole is not None:
                    if whole.remaining is not None:
                        whole.remaining -= 1
                        if whole.remaining <= 0:
                            self._whole = None
                    return whole.status, _dumps(
                        _error_body(whole.status, whole.error_type, whole.reason))
                _validate(ops, path_index)
                self._refuse(ops)
                try:
                    items = [self._item(op, path_index) for op in ops]
                except _HookError as exc:
                    self.hook_errors.append(str(exc))
                    return 500, _dumps(_error_body(500, "fault_injection_exception", str(exc)))
                lose = self._lose > 0
                if lose:
                    self._lose -= 1
        except _BadRequest as exc:
            return exc.reply
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
        if lose:
            return None
        errors = any("error" in result for item in items for result in item.values())
        response: dict[str, Any] = {"took": 1, "errors": errors, "items": items}
        filters = [p for value in query.get("filter_path", []) for p in value.split(",") if p]
        return 200, _dumps(_filter_path(response, filters))

    def _item(self, op: _Op, path_index: str | None) -> dict[str, Any]:
        """One item's answer; called under the lock."""
        index = str(op.meta.get("_index") or path_index)
        stream = self.data_streams and bool(_DATA_STREAM.match(index))
        concrete = f".ds-{index}-{self._started_day}-000001" if stream else index
        doc_id = str(op.meta["_id"]) if op.meta.get("_id") is not None else _auto_id()
        item = BulkItem(op.action, index, doc_id, op.source, op.line)

        def fail(status: int, error_type: str, reason: str, **extra: Any) -> dict[str, Any]:
            if self._failure_store and error_type == "document_parsing_exception":
                return self._to_failure_store(op, index, doc_id, error_type, reason)
            self.item_statuses[status] += 1
            error = {"type": error_type, "reason": reason, **extra}
            return {op.action: {"_index": concrete, "_id": doc_id, "status": status,
                                "error": error}}

        def shard(**extra: Any) -> dict[str, Any]:
            return {"index_uuid": _uuid(concrete), "shard": "0", "index": concrete, **extra}

        if stream and op.action != "create":
            return fail(400, "illegal_argument_exception",
                        "only write ops with an op_type of create are allowed in data streams")
        if self._block is not None and not (self._block == "flood_stage"
                                            and op.action == "delete"):
            status, text = _BLOCKS[self._block]
            return fail(status, "cluster_block_exception",
                        f"index [{concrete}] blocked by: [{text}];")
        for throttle in self._throttles:
            if _call(throttle.match, item) and (throttle.times is None
                                                or throttle.rejected[doc_id] < throttle.times):
                throttle.rejected[doc_id] += 1
                return fail(429, "es_rejected_execution_exception",
                            f"rejected execution of primary operation [shard_detail=[{concrete}]"
                            "[0][fault-injection]] (fault injection)")
        if op.source_error is not None:
            return fail(400, "document_parsing_exception", op.source_error, **shard())
        for reject in self._rejects:
            if _call(reject.match, item):
                reason = reject.reason or "[1:1] failed to parse: rejected by fault injection"
                return fail(reject.status, reject.error_type, reason, **shard())
        if op.source is not None and op.action in ("create", "index"):
            for name, es_type in self._fields.items():
                mismatch = _mismatch(op.source, name, es_type)
                if mismatch is not None:
                    value, caused_by = mismatch
                    column = _column(op.raw, name)
                    reason = (f"[1:{column}] failed to parse field [{name}] of type [{es_type}] "
                              f"in document with id '{doc_id}'. Preview of field's value: "
                              f"'{_preview(value)}'")
                    extra = {"caused_by": caused_by} if caused_by else {}
                    return fail(400, "document_parsing_exception", reason, **shard(), **extra)
            if stream and _lookup(op.source, "@timestamp")[0] is False:
                return fail(400, "document_parsing_exception",
                            f"[1:{len(op.raw.strip())}] failed to parse: data stream timestamp "
                            "field [@timestamp] is missing", **shard())
        return self._apply(op, concrete, doc_id, fail, shard)

    def _refuse(self, ops: list[_Op]) -> None:
        """The scripted whole-request refusals; called under the lock."""
        for op in ops:
            found = self._refusing.get(str(op.meta.get("_id")))
            if found is not None:
                error_type, reason = found
                raise _BadRequest(400, error_type, reason or (
                    f"Validation Failed: 1: item [{op.meta.get('_id')}] refused by fault "
                    "injection;"))

    def _to_failure_store(self, op: _Op, index: str, doc_id: str, error_type: str,
                          reason: str) -> dict[str, Any]:
        """The failed document kept in `index`'s failure store; called under the lock."""
        self.failure_docs.append({"document": {"id": doc_id, "index": index,
                                               "source": op.source},
                                  "error": {"type": error_type, "message": reason}})
        self.item_statuses[201] += 1
        self._seq_no += 1
        return {op.action: {"_index": f".fs-{index}-{self._started_day}-000001",
                            "_id": _auto_id(), "_version": 1, "result": "created",
                            "_shards": {"total": 2, "successful": 1, "failed": 0},
                            "_seq_no": self._seq_no, "_primary_term": 1,
                            "failure_store": "used", "status": 201}}

    def _apply(self, op: _Op, concrete: str, doc_id: str,
               fail: Callable[..., dict[str, Any]],
               shard: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        current = self.docs.get(doc_id)
        version = self._versions.get(doc_id, 0)

        def done(status: int, result: str, new_version: int) -> dict[str, Any]:
            self.item_statuses[status] += 1
            answer: dict[str, Any] = {"_index": concrete, "_id": doc_id, "_version": new_version,
                                      "result": result}
            if result != "noop":
                self._seq_no += 1
                answer["_shards"] = {"total": 2, "successful": 1, "failed": 0}
            answer.update(_seq_no=self._seq_no, _primary_term=1, status=status)
            return {op.action: answer}

        def store(doc: dict[str, Any]) -> int:
            self.docs[doc_id] = doc
            self._versions[doc_id] = version + 1
            return version + 1

        if op.action == "create":
            if current is not None:
                return fail(409, "version_conflict_engine_exception",
                            f"[{doc_id}]: version conflict, document already exists "
                            f"(current version [{version}])", **shard())
            return done(201, "created", store(op.source or {}))
        if op.action == "index":
            existed = current is not None
            new_version = store(op.source or {})
            return done(200 if existed else 201, "updated" if existed else "created", new_version)
        if op.action == "delete":
            if current is None:
                return done(404, "not_found", max(version, 1))
            del self.docs[doc_id]
            self._versions[doc_id] = version + 1
            return done(200, "deleted", version + 1)
        update = op.source or {}
        if "script" in update:
            return fail(400, "illegal_argument_exception",
                        "scripts are not supported by the fault-injection server")
        patch = update.get("doc")
        if current is None:
            if isinstance(patch, dict) and update.get("doc_as_upsert"):
                return done(201, "created", store(patch))
            if isinstance(update.get("upsert"), dict):
                return done(201, "created", store(update["upsert"]))
            return fail(404, "document_missing_exception", f"[{doc_id}]: document missing",
                        **shard())
        if not isinstance(patch, dict):
            return fail(400, "action_request_validation_exception",
                        "Validation Failed: 1: script or doc is missing;")
        merged = _merge(current, patch)
        if merged == current:
            return done(200, "noop", version)
        return done(200, "updated", store(merged))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: FaultBulkServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(): a DNS lookup we do not want.
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = int(self.socket.getsockname()[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().close_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-injection"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # the client or down()/stop() closed the connection
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _dispatch(self) -> None:
        owner = cast(_HTTPServer, self.server).owner
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self._send(*exc.reply, product=owner.product_header)
            return
        reply = owner._handle(self.command, self.path, self.headers, body)
        if reply is None:
            self.close_connection = True
            return
        self._send(*reply, product=owner.product_header)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as exc:
                raise _BadRequest(400, "parse_exception", f"bad gzip body: {exc}") from None
        return body

    def _send(self, status: int, payload: bytes, *, product: bool) -> None:
        self.send_response(status)
        if product:
            self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


# -- helpers -----------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _error_body(status: int, error_type: str, reason: str,
                caused_by: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"root_cause": [{"type": error_type, "reason": reason}],
                             "type": error_type, "reason": reason}
    if caused_by:
        error["caused_by"] = caused_by
    return {"error": error, "status": status}


def _auto_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def _uuid(index: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(index.encode()).digest()[:16]).decode()[:22]


def _matcher(match: Iterable[str] | ItemPredicate | float, seed: int) -> ItemPredicate:
    if isinstance(match, (int, float)):
        probability = float(match)

        def sampled(item: BulkItem) -> bool:
            digest = hashlib.blake2b(f"{seed}:{item.id}".encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") / 2**64 < probability

        return sampled
    if callable(match):
        return match
    ids = frozenset([match] if isinstance(match, str) else match)
    return lambda item: item.id in ids


def _call(predicate: ItemPredicate, item: BulkItem) -> bool:
    try:
        return bool(predicate(item))
    except Exception as exc:
        raise _HookError(f"fault predicate raised {exc!r} for item {item.id!r}") from exc


def _parse_bulk(body: bytes) -> list[_Op]:
    if not body.strip():
        raise _BadRequest(400, "action_request_validation_exception",
                          "Validation Failed: 1: no requests added;")
    if not body.endswith(b"\n"):
        raise _BadRequest(400, "illegal_argument_exception",
                          "The bulk request must be terminated by a newline [\\n]")
    lines = body.split(b"\n")[:-1]
    ops: list[_Op] = []
    i = 0
    while i < len(lines):
        raw, line = lines[i].strip(), i + 1
        i += 1
        if not raw:
            continue
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            reason = f"[{line}:1] Malformed action/metadata line [{line}]: {exc}"
            raise _BadRequest(400, "x_content_parse_exception", reason) from None
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise _BadRequest(400, "illegal_argument_exception",
                              f"Malformed action/metadata line [{line}], expected a single "
                              "object with one field")
        ((action, meta),) = parsed.items()
        if action not in ACTIONS:
            raise _BadRequest(400, "illegal_argument_exception",
                              f"Malformed action/metadata line [{line}], expected field "
                              f"[create], [delete], [index] or [update] but found [{action}]")
        if not isinstance(meta, dict):
            raise _BadRequest(400, "illegal_argument_exception",
                              f"Malformed action/metadata line [{line}], expected START_OBJECT")
        op = _Op(action, meta, line)
        if action != "delete":
            if i >= len(lines):
                raise _BadRequest(400, "action_request_validation_exception",
                                  "Validation Failed: 1: source is missing;")
            op.raw = lines[i]
            i += 1
            try:
                source = json.loads(op.raw)
            except ValueError as exc:
                op.source_error = f"[1:1] failed to parse: {exc}"
            else:
                if isinstance(source, dict):
                    op.source = source
                else:
                    op.source_error = ("[1:1] failed to parse: root of the document must be an "
                                       "object")
        ops.append(op)
    return ops


def _validate(ops: list[_Op], path_index: str | None) -> None:
    """BulkRequest.validate: any item's problem fails the whole request with a 400."""
    problems = []
    for op in ops:
        if not (op.meta.get("_index") or path_index):
            problems.append("index is missing")
        doc_id = op.meta.get("_id")
        if op.action in ("update", "delete") and doc_id is None:
            problems.append("id is missing")
        if doc_id is not None:
            size = len(str(doc_id).encode("utf-8", "surrogatepass"))
            if size > MAX_ID_BYTES:
                problems.append(f"id [{doc_id}] is too long, must be no longer than "
                                f"{MAX_ID_BYTES} bytes but was: {size}")
    if problems:
        listed = "".join(f"{n}: {problem};" for n, problem in enumerate(problems, 1))
        raise _BadRequest(400, "action_request_validation_exception",
                          f"Validation Failed: {listed}")


def _lookup(source: dict[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) of a field by dotted path, through objects or literal dotted keys."""
    if path in source:
        return True, source[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = source.get(".".join(parts[:cut]))
        if isinstance(head, dict):
            found, value = _lookup(head, ".".join(parts[cut:]))
            if found:
                return True, value
    return False, None


def _mismatch(source: dict[str, Any], name: str,
              es_type: str) -> tuple[Any, dict[str, Any] | None] | None:
    """(bad value, caused_by) when the field cannot be `es_type`, else None."""
    found, value = _lookup(source, name)
    if not found:
        return None
    for element in value if isinstance(value, list) else [value]:
        caused_by = _type_error(element, es_type)
        if caused_by is not None:
            return element, caused_by or None
    return None


def _type_error(value: Any, es_type: str) -> dict[str, Any] | None:
    """None when the value fits; else the caused_by Elasticsearch gives ({} for none)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"type": "illegal_state_exception",
                "reason": "Can't get text on a START_OBJECT"}
    if es_type == "keyword":
        return None
    if es_type == "boolean":
        if isinstance(value, bool) or value in ("true", "false", ""):
            return None
        return {"type": "illegal_argument_exception",
                "reason": f"Failed to parse value [{_preview(value)}] as only [true] or [false] "
                          "are allowed."}
    if isinstance(value, bool):
        token = "VALUE_TRUE" if value else "VALUE_FALSE"
        return {"type": "x_content_parse_exception",
                "reason": f"Current token ({token}) not numeric, can not use numeric value "
                          "accessors"}
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else {}
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return {"type": "number_format_exception",
                    "reason": f'For input string: "{value}"'}
        return None if math.isfinite(number) else {}
    return {}


def _column(raw: bytes, name: str) -> int:
    """1-based column of the field's value in the source line, as Elasticsearch reports it."""
    key = json.dumps(name.rsplit(".", 1)[-1]).encode()
    found = re.search(re.escape(key) + rb"\s*:\s*", raw)
    return len(raw[:found.end()].decode(errors="replace")) + 1 if found else 1


def _preview(value: Any) -> str:
    """A value as Java's toString() shows it in Elasticsearch's error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_preview(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_preview(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        old = merged.get(key)
        merged[key] = (_merge(old, value) if isinstance(old, dict) and isinstance(value, dict)
                       else value)
    return merged


_MISSING: Final = object()


def _filter_path(response: dict[str, Any], patterns: list[str]) -> Any:
    """Elasticsearch's `filter_path` inclusions (`*` in a segment, `**` for any depth);
    exclusions (`-field`) are ignored, so the answer may hold more than asked for."""
    included = [p.split(".") for p in patterns if not p.startswith("-")]
    if not included:
        return response
    kept = _keep(response, included)
    return {} if kept is _MISSING else kept


def _keep(value: Any, patterns: list[list[str]]) -> Any:
    if any(not p or p == ["**"] for p in patterns):
        return value
    if isinstance(value, list):
        elements = [_keep(v, patterns) for v in value]
        kept_list = [v for v in elements if v is not _MISSING]
        return kept_list if kept_list else _MISSING
    if not isinstance(value, dict):
        return _MISSING
    kept: dict[str, Any] = {}
    for key, child in value.items():
        deeper: list[list[str]] = []
        for p in patterns:
            if p[0] == "**":
                deeper.append(p)
                if len(p) > 1 and fnmatchcase(key, p[1]):
                    deeper.append(p[2:])
            elif fnmatchcase(key, p[0]):
                deeper.append(p[1:])
        if deeper:
            result = _keep(child, deeper)
            if result is not _MISSING:
                kept[key] = result
    return kept if kept else _MISSING
