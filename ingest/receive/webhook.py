"""The webhook hot path as a raw ASGI app, and the one place errors become HTTP statuses."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import lru_cache
from typing import Any

import orjson

from ingest.errors import (
    EventInvalid,
    IngestError,
    MalformedPayload,
    PayloadTooLarge,
    SignatureMismatch,
    http_status,
    outcome,
)
from ingest.metrics import Metrics
from ingest.receive import body as events
from ingest.receive.enrich import Enricher, unpriced
from ingest.receive.signing import HEADERS, Secret, verify
from ingest.records import Invalid, Row
from ingest.store import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("ingest.webhook")

_INTERNAL = orjson.dumps({"error": "internal_error",
                          "message": "the receiver failed on this request; it is logged"})
_JSON = (b"content-type", b"application/json")
_SIGNATURE_HEADERS = frozenset(name.encode() for name in HEADERS)
_MAX_REPORTED_ERRORS = 20


@lru_cache(maxsize=1024)
def _answer(accepted: int, duplicates: int, quarantined: int) -> bytes:
    # The same few answers over and over: {"accepted":1,"duplicates":0,"quarantined":0}.
    return orjson.dumps({"accepted": accepted, "duplicates": duplicates,
                         "quarantined": quarantined})


def error_body(exc: IngestError) -> bytes:
    return orjson.dumps({"error": exc.code, "message": exc.message})


class WebhookEndpoint:
    """POST handler: verify over raw bytes, parse, enrich, commit, then answer 202."""

    def __init__(
        self,
        *,
        secrets: Sequence[str],
        tolerance_s: int,
        max_body_bytes: int,
        store: Store,
        enricher: Enricher,
        metrics: Metrics,
        clock: Callable[[], float],
        retry_after_s: int,
    ) -> None:
        self.secrets = [Secret.parse(s) for s in secrets]
        self.tolerance_s = tolerance_s
        self.max_body = max_body_bytes
        self.store = store
        self.enricher = enricher
        self.metrics = metrics
        self.clock = clock
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body = await self._handle(scope, receive)
            headers = [_JSON]
        except IngestError as exc:
            status, body = http_status(exc), error_body(exc)
            headers = [_JSON]
            if status == 503:
                headers.append((b"retry-after", self.retry_after))
            elif status == 413:
                # The rest of the body is not wanted: the server drains what is in flight for
                # a moment and closes, so the sender reads this answer instead of a reset.
                headers.append((b"connection", b"close"))
            self.metrics.refused(outcome(exc), exc.code)
            log.debug("webhook refused: %s %s", status, exc.code)
        except _ClientGone:
            return
        except Exception as exc:
            # The safety net: a fault of ours, never the sender's. Logged by type and place
            # only, because the message may quote the body.
            log.error("webhook failed: %s", where(exc))
            self.metrics.refused("error", "internal_error")
            status, body, headers = 500, _INTERNAL, [_JSON]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        self.store.refuse_if_full()
        wanted: dict[str, str] = {}
        content_type = content_encoding = None
        length = 0
        # ASGI servers hand header names over lowercased.
        for name, raw_value in scope["headers"]:
            if name == b"content-type":
                content_type = raw_value.decode("latin-1")
            elif name == b"content-encoding":
                content_encoding = raw_value.decode("latin-1")
            elif name == b"content-length":
                length = int(raw_value) if raw_value.isdigit() else 0
            elif name in _SIGNATURE_HEADERS:
                wanted[name.decode("latin-1")] = raw_value.decode("latin-1")
        fmt = events.body_format(content_type)
        gzipped = events.check_encoding(content_encoding)
        if length > self.max_body:
            raise PayloadTooLarge(f"body is over the {self.max_body} byte limit")
        body = await self._read(receive)
        received_ms = int(self.clock() * 1000)
        decoded = body
        try:
            decoded = self._verified(wanted, body, gzipped, received_ms / 1000)
            items = events.split(decoded, fmt)
        except MalformedPayload as exc:
            # Signed, so the relay sent it: kept with the reason, as invalid events are.
            if decoded.strip():
                await self.store.write((), [Invalid(decoded, exc.message)], received_ms)
            raise

        rows: list[Row] = []
        invalid: list[Invalid] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                if item.data is None:
                    raise EventInvalid(item.reason or "invalid event")
                rows.append(self.enricher.row(events.validate(item.data), item.raw, received_ms))
                continue
            except EventInvalid as exc:
                reason = exc.message
            except Exception as exc:
                # Our processing failed on this one event: keep it rather than make the relay
                # retry the whole body for ever.
                log.error("event could not be processed, kept in quarantine: %s", where(exc))
                self.metrics.refused("error", "unprocessable_event")
                reason = f"event could not be processed: {type(exc).__name__}"
            invalid.append(Invalid(item.raw, reason))
            if len(errors) < _MAX_REPORTED_ERRORS:
                errors.append({"index": index, "reason": reason})
        inserted = await self.store.write(rows, invalid, received_ms)

        accepted = sum(inserted)
        duplicates = len(inserted) - accepted
        self._count(rows, inserted, accepted, duplicates, len(invalid))
        # Nothing usable at all is the sender's error; it is kept in quarantine all the same.
        status = 422 if not rows else 202
        if errors:
            return status, orjson.dumps({"accepted": accepted, "duplicates": duplicates,
                                         "quarantined": len(invalid), "errors": errors})
        return status, _answer(accepted, duplicates, len(invalid))

    def _verified(self, headers: dict[str, str], body: bytes, gzipped: bool, now: float) -> bytes:
        """Check the signature over the wire bytes; for gzip the decompressed body may be signed."""
        if not gzipped:
            verify(headers, body, self.secrets, now, self.tolerance_s)
            return body
        try:
            verify(headers, body, self.secrets, now, self.tolerance_s)
        except SignatureMismatch as mismatch:
            try:
                decoded = events.gunzip(body, self.max_body)
            except (MalformedPayload, PayloadTooLarge):
                raise mismatch from None  # unauthenticated: the signature is the answer
            verify(headers, decoded, self.secrets, now, self.tolerance_s)
            return decoded
        return events.gunzip(body, self.max_body)

    async def _read(self, receive: Receive) -> bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self.max_body:
                raise PayloadTooLarge(f"body is over the {self.max_body} byte limit")
            return body
        chunks, size = [body], len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"body is over the {self.max_body} byte limit")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _count(self, rows: list[Row], inserted: list[bool], accepted: int, duplicates: int,
               quarantined: int) -> None:
        m = self.metrics
        m.relay.observe(rows, inserted)
        if accepted:
            m.accepted.inc(accepted)
            missing = sum(1 for row, new in zip(rows, inserted, strict=True)
                          if new and unpriced(row))
            if missing:
                m.unpriced.inc(missing)
        if duplicates:
            m.duplicate.inc(duplicates)
        if quarantined:
            m.quarantined.inc(quarantined)


def where(exc: BaseException) -> str:
    """`RecursionError at events.py:97 in split`: the type and the innermost frame, no message."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    file = last.filename.rpartition("/")[2]
    return f"{type(exc).__name__} at {file}:{last.lineno} in {last.name}"


class _ClientGone(Exception):
    """The sender hung up before the body arrived; there is nobody to answer."""
