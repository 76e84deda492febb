"""Pure body handling: content types, bounded gunzip, splitting batches, the typed event model."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ingest.errors import EventInvalid, MalformedPayload, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
    "application/jsonlines",
})
MAX_ID_LENGTH = 512
MAX_COUNT = 10**15  # keeps every count inside SQLite's and Elasticsearch's 64-bit integers


def body_format(content_type: str | None) -> str:
    """`json` or `ndjson` for a Content-Type header; no header means JSON, sniffed later."""
    if not content_type:
        return "json"
    media = content_type.split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in JSON_TYPES or media.endswith("+json"):
        return "json"
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not JSON; send application/json or application/x-ndjson"
    )


def check_encoding(content_encoding: str | None) -> bool:
    """True when the body is gzip; identity is fine; anything else is refused."""
    if not content_encoding:
        return False
    coding = content_encoding.strip().lower()
    if coding in ("gzip", "x-gzip"):
        return True
    if coding == "identity":
        return False
    raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported; use gzip")


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most `limit` bytes so a small bomb cannot take the receiver's memory."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise MalformedPayload("Content-Encoding is gzip but the body is not valid gzip") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body is over the {limit} byte limit")
    if not inflater.eof:
        raise MalformedPayload("gzip body is truncated")
    return out


@dataclass(slots=True)
class Item:
    """One event candidate from a body: its bytes and either parsed data or why it is invalid."""

    raw: bytes
    data: dict[str, Any] | None = None
    reason: str | None = None


def split(body: bytes, fmt: str) -> list[Item]:
    """One object, an array of objects, or NDJSON lines -> items; bad elements keep their bytes."""
    if fmt == "ndjson":
        return _lines(body)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # Senders that label NDJSON as application/json still deserve their events.
        if body.lstrip()[:1] == b"{" and b"\n" in body.strip():
            return _lines(body)
        raise MalformedPayload(f"body is not valid JSON: {exc}") from None
    if isinstance(parsed, dict):
        return [Item(body, parsed)]
    if isinstance(parsed, list):
        return [_element(value) for value in parsed] or _empty()
    return [Item(body, None, "event must be a JSON object")]


def _lines(body: bytes) -> list[Item]:
    return [_item(line) for line in body.splitlines() if line.strip()] or _empty()


def _empty() -> list[Item]:
    raise MalformedPayload("body holds no events")


def _item(line: bytes) -> Item:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return Item(line, None, f"line is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return Item(line, None, "event must be a JSON object")
    return Item(line, value)


def _element(value: Any) -> Item:
    raw = orjson.dumps(value)
    if not isinstance(value, dict):
        return Item(raw, None, "event must be a JSON object")
    return Item(raw, value)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Open):
    prompt_tokens: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    completion_tokens: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    total_tokens: int | None = Field(default=None, ge=0, le=MAX_COUNT)


class ErrorInfo(_Open):
    message: str | None = None


class UserMetadata(_Open):
    user_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    trace_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)

    @field_validator("user_id", "trace_id", mode="before")
    @classmethod
    def _number_to_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Event(_Open):
    """A relay event: known fields typed, every other field kept as sent."""

    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    type: str | None = None
    model: str | None = None
    status_code: int | None = Field(default=None, ge=100, le=599)
    latency_ms: float | None = Field(default=None, ge=0)
    response_time_ms: float | None = Field(default=None, ge=0)
    usage: Usage | None = None
    cost_usd: float | None = Field(default=None, ge=0)
    error: ErrorInfo | None = None
    user_metadata: UserMetadata | None = None
    # Kept as sent: a bad timestamp falls back to receive time instead of losing the event.
    timestamp: Any = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("error", mode="before")
    @classmethod
    def _error_text(cls, value: Any) -> Any:
        return {"message": value} if isinstance(value, str) else value


def validate(data: dict[str, Any]) -> dict[str, Any]:
    """The event as a plain dict with known fields normalised; raises EventInvalid."""
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise EventInvalid(f"{where}: {first['msg']}") from None
    return event.model_dump(exclude_unset=True)


def derived_id(data: dict[str, Any]) -> str:
    """Deterministic id for an event sent without one: same content, same id, across formats."""
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "sha256-" + digest[:40]
