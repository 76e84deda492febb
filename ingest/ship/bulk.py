"""Pure bulk stages: expand rows to `create` actions, chunk by count and bytes, classify items."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from ingest.receive.body import MAX_ID_BYTES, id_bytes
from ingest.records import DeadLetter, Outcome, Pending
from ingest.remote import retryable

SHIPPED_STATUSES = frozenset({200, 201, 409})  # 409 on create: the document is already there
BLOCK_TYPES = frozenset({"cluster_block_exception"})
# Only what classification needs: small responses even for 10,000 items. `failure_store` is
# `used` on a 201 whose document went to the data stream's failure store (Elasticsearch 9.1+,
# `FailureStoreStatus` in elasticsearch-specification's _global/bulk/types.ts).
FILTER_PATH = ("errors,items.*.status,items.*.error.type,items.*.error.reason,"
               "items.*.failure_store")
FAILURE_STORE_USED = "failure_store_used"
ID_TOO_LONG = "id_too_long"


def source(doc: bytes, raw: bytes) -> bytes:
    """The document to index: the stored one plus `event.original`, the raw event unindexed."""
    original = orjson.dumps({"original": raw.decode("utf-8", "replace")})
    if b'"event":' not in doc:
        # Splice instead of parse-and-dump: the stored document is already canonical JSON.
        return doc[:-1] + b',"event":' + original + b"}"
    data = orjson.loads(doc)
    event, extra = data.get("event"), {"original": raw.decode("utf-8", "replace")}
    if isinstance(event, dict):
        data["event"] = {**event, **extra}
    else:
        data["event"] = extra if event is None else {"value": event, **extra}
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        # A stored document at the receiver's nesting limit has no level left for
        # `event.value`: the sender's `event` then goes as its JSON text.
        data["event"] = {"value": orjson.dumps(event).decode(), **extra}
        return orjson.dumps(data)


def action(item: Pending, index: str) -> bytes:
    """One `create` action with the deterministic `_id`, and its source, as NDJSON."""
    meta = orjson.dumps({"create": {"_index": index, "_id": item.event_id}})
    return meta + b"\n" + source(item.doc, item.raw) + b"\n"


def chunks(items: Iterable[Pending], index: str, max_docs: int,
           max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]:
    """Bulk bodies of at most `max_docs` actions and about `max_bytes` (one oversized doc alone)."""
    return batches(items, lambda item: action(item, index), max_docs, max_bytes)


def batches(items: Iterable[Pending], encode: Callable[[Pending], bytes], max_docs: int,
            max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]:
    """Bodies of encoded items, bounded by count and bytes: for any sink's wire format."""
    batch: list[Pending] = []
    body: list[bytes] = []
    size = 0
    for item in items:
        line = encode(item)
        if batch and (len(batch) >= max_docs or size + len(line) > max_bytes):
            yield batch, b"".join(body)
            batch, body, size = [], [], 0
        batch.append(item)
        body.append(line)
        size += len(line)
    if batch:
        yield batch, b"".join(body)


def unsendable(items: Iterable[Pending]) -> tuple[list[Pending], list[DeadLetter]]:
    """Split off the events Elasticsearch cannot take as they are: an `_id` over 512 bytes.

    The receiver refuses such ids since it counts bytes, but a store written by an older
    release may hold some; sent, one would fail its whole bulk request with a 400.
    """
    fit: list[Pending] = []
    dead: list[DeadLetter] = []
    for item in items:
        size = id_bytes(item.event_id) if len(item.event_id) > MAX_ID_BYTES // 4 else 0
        if size > MAX_ID_BYTES:
            dead.append(DeadLetter(item, 400, ID_TOO_LONG, (
                f"the event id is {size} bytes of UTF-8, over Elasticsearch's {MAX_ID_BYTES}-byte "
                "limit for _id: not sent (Elasticsearch refuses the whole bulk request for it)")))
        else:
            fit.append(item)
    return fit, dead


def classify(sent: Sequence[Pending], response: dict[str, Any]) -> Outcome:
    """Per item: shipped, retry (with its attempt counted), dead letter, or a cluster block."""
    outcome = Outcome()
    items = response.get("items") or []
    if len(items) != len(sent):
        # Not an answer we can pair with what we sent: retry all of it rather than guess.
        outcome.retry = [again(item) for item in sent]
        return outcome
    for item, answer in zip(sent, items, strict=True):
        result = next(iter(answer.values())) if isinstance(answer, dict) and answer else {}
        status = int(result.get("status", 0))
        error = result.get("error") or {}
        error_type = str(error.get("type", "")) if isinstance(error, dict) else str(error)
        reason = str(error.get("reason", "")) if isinstance(error, dict) else ""
        if status in SHIPPED_STATUSES and result.get("failure_store") == "used":
            # Refused, then kept beside the data stream: not searchable, not in any report.
            outcome.dead.append(DeadLetter(
                item, status, FAILURE_STORE_USED, "refused by Elasticsearch and kept in the data "
                "stream's failure store (search it with <data stream>::failures); this receiver "
                "expects the failure store disabled for its data stream"))
        elif status in SHIPPED_STATUSES:
            outcome.shipped.append(item)
            outcome.conflicts += status == 409
        elif error_type in BLOCK_TYPES or "read-only" in reason or "read_only" in reason:
            # A full disk or a read-only index is the cluster's problem, never the event's.
            outcome.blocked = reason or error_type
            outcome.retry.append(again(item))
        elif status == 0 or retryable(status):
            outcome.retry.append(again(item))
        else:
            outcome.dead.append(DeadLetter(item, status, error_type or "unknown", reason))
    return outcome


def merge(outcomes: Iterable[Outcome]) -> Outcome:
    """Several outcomes (of parts of one batch) as one."""
    merged = Outcome()
    for part in outcomes:
        merged.shipped += part.shipped
        merged.conflicts += part.conflicts
        merged.retry += part.retry
        merged.dead += part.dead
        merged.blocked = merged.blocked or part.blocked
    return merged


def again(item: Pending) -> Pending:
    """The same event, one attempt more."""
    return Pending(item.seq, item.event_id, item.doc, item.raw, item.attempts + 1)


def backoff(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, initial * 2**attempt)]."""
    return rng.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))
