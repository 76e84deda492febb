"""Pure body handling: content types, bounded gunzip, splitting batches, the typed event model."""

from __future__ import annotations

import hashlib
import re
import sys
import zlib
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson

from ingest.errors import EventInvalid, MalformedPayload, PayloadTooLarge, UnsupportedMediaType

JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
    "application/jsonlines",
})
MAX_ID_LENGTH = 512
# The event id becomes the Elasticsearch `_id`, limited to 512 bytes of UTF-8; one longer id
# fails the whole bulk request it travels in (DocWriteRequest.validateDocIdLength).
MAX_ID_BYTES = 512
_SAFE_ID_CHARS = MAX_ID_BYTES // 4  # no text this short can take more bytes than that
MAX_COUNT = 10**15  # keeps every count inside SQLite's and Elasticsearch's 64-bit integers
# orjson's parser refuses JSON nested deeper than this; its encoder refuses a stored document
# nested deeper than MAX_EVENT_DEPTH, so such an event is quarantined (its bytes are kept).
MAX_JSON_DEPTH = 1024
MAX_EVENT_DEPTH = 254


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
    """Decompress at most `limit` bytes so a small bomb cannot take the receiver's memory.

    Every gzip member is read, as `gzip.decompress` would: concatenated members are valid gzip.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(data, limit - size + 1)
        except zlib.error:
            raise MalformedPayload("Content-Encoding is gzip but the body is not gzip") from None
        size += len(out)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body is over the {limit} byte limit")
        if not inflater.eof:
            raise MalformedPayload("gzip body is truncated")
        parts.append(out)
        data = inflater.unused_data
        if not data.strip(b"\0"):  # trailing zero padding is tolerated, as gzip(1) does
            return b"".join(parts)


# Each array element as the exact bytes the sender signed: quarantined elements keep them.
_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
# The tokens that decide where a top-level array element ends: strings, brackets, commas.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+"|[\[\]{},]')


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
    if body.lstrip()[:1] == b"[":
        elements: list[msgspec.Raw] | list[bytes] | None
        try:
            elements = _RAW_ARRAY.decode(body)
        except (msgspec.DecodeError, RecursionError):
            # One bad element (a lone surrogate, nesting past the decoder's stack) fails the
            # whole decode; when the brackets still balance, only that element is refused.
            elements = _bracketed_elements(body)
        if elements is not None:
            return [_item(bytes(raw), "element") for raw in elements] or _empty()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # Senders that label NDJSON as application/json still deserve their events; a broken
        # pretty-printed object (whose first line is no object) stays a 400.
        if _first_line_is_object(body):
            return _lines(body)
        raise MalformedPayload(f"body is not valid JSON: {exc}") from None
    if isinstance(parsed, dict):
        return [Item(body, parsed)]
    return [Item(body, None, "event must be a JSON object")]


def _bracketed_elements(body: bytes) -> list[bytes] | None:
    """The raw elements of a top-level array by bracket depth; None when it is not one array.

    Only brackets, commas and strings are looked at: each element is parsed on its own later,
    which checks everything else.
    """
    depth, begin, elements = 0, 0, []
    for token in _TOKEN.finditer(body, body.find(b"[")):
        char = token.group()[0]
        if char == 0x5B or char == 0x7B:  # [ {
            depth += 1
            if depth == 1:
                begin = token.end()
        elif char == 0x5D or char == 0x7D:  # ] }
            depth -= 1
            if depth == 0:
                elements.append(body[begin:token.start()].strip())
                if body[token.end():].strip() or not all(elements):
                    return None
                return elements
        elif char == 0x2C and depth == 1:  # ,
            elements.append(body[begin:token.start()].strip())
            begin = token.end()
    return None


def _first_line_is_object(body: bytes) -> bool:
    first, newline, _ = body.strip().partition(b"\n")
    if not newline:
        return False
    try:
        return isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return False


def _lines(body: bytes) -> list[Item]:
    return [_item(line) for line in body.splitlines() if line.strip()] or _empty()


def _empty() -> list[Item]:
    raise MalformedPayload("body holds no events")


def _item(raw: bytes, what: str = "line") -> Item:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Item(raw, None, f"{what} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return Item(raw, None, "event must be a JSON object")
    return Item(raw, value)


# Known fields typed for checking only: the event itself stays the plain dict it was parsed
# into, so every field the relay sends, known or not, is kept as sent. msgspec checks a
# dict ~10x faster than pydantic here; `strict=False` takes numbers sent as text ("200").
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)] | int
# Finite: "inf" sent as text would otherwise pass and poison every sum and percentile.
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=sys.float_info.max)]


class Usage(msgspec.Struct):
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    total_tokens: Count | None = None


class ErrorInfo(msgspec.Struct):
    message: str | None = None


class UserMetadata(msgspec.Struct):
    user_id: Ident | None = None
    trace_id: Ident | None = None


class Event(msgspec.Struct):
    """A relay event's known fields; unknown ones are not checked and stay in the dict."""

    id: Ident | None = None
    type: str | None = None
    model: str | None = None
    status_code: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    latency_ms: NonNegative | None = None
    response_time_ms: NonNegative | None = None
    usage: Usage | None = None
    cost_usd: NonNegative | None = None
    error: ErrorInfo | str | None = None
    user_metadata: UserMetadata | None = None
    # Not typed: a bad timestamp falls back to receive time instead of losing the event.


_FLOATS = ("latency_ms", "response_time_ms", "cost_usd")
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_convert = msgspec.convert


def validate(data: dict[str, Any]) -> dict[str, Any]:
    """The event dict with known fields checked and normalised in place; raises EventInvalid.

    Normalised: numbers sent as text become numbers, integer ids become text, an error sent
    as a string becomes `{"message": ...}`.
    """
    try:
        event = _convert(data, Event, strict=False)
    except msgspec.ValidationError as exc:
        raise EventInvalid(_reason(str(exc))) from None
    # Straight-line on purpose: this runs for every event, and almost always changes nothing.
    if event.id is not None:
        if event.id.__class__ is not str:
            data["id"] = _text(event.id, "id")
        elif len(event.id) > _SAFE_ID_CHARS and id_bytes(event.id) > MAX_ID_BYTES:
            raise EventInvalid(f"id: Expected `str` of at most {MAX_ID_BYTES} bytes in UTF-8 "
                               f"(Elasticsearch's `_id` limit), got {id_bytes(event.id)}")
    if event.status_code is not None and data["status_code"].__class__ is not int:
        data["status_code"] = event.status_code
    for name in _FLOATS:
        value = getattr(event, name)
        if value is not None and data[name].__class__ is not float:
            data[name] = value
    usage = event.usage
    if usage is not None:
        given = data["usage"]
        for name in _COUNTS:
            value = getattr(usage, name)
            if value is not None and given[name].__class__ is not int:
                given[name] = value
    if event.error.__class__ is str:
        data["error"] = {"message": event.error}
    meta = event.user_metadata
    if meta is not None:
        if meta.user_id is not None and meta.user_id.__class__ is not str:
            data["user_metadata"]["user_id"] = _text(meta.user_id, "user_metadata.user_id")
        if meta.trace_id is not None and meta.trace_id.__class__ is not str:
            data["user_metadata"]["trace_id"] = _text(meta.trace_id, "user_metadata.trace_id")
    return data


def _text(value: str | int, where: str) -> str:
    if isinstance(value, str):
        return value
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise EventInvalid(f"{where}: Expected `str` of length <= {MAX_ID_LENGTH}")
    return text


def id_bytes(event_id: str) -> int:
    """The id's length as Elasticsearch counts it: bytes of UTF-8."""
    return len(event_id.encode("utf-8", "surrogatepass"))


def _reason(message: str) -> str:
    """`Expected `int` >= 100 - at `$.status_code`` -> `status_code: Expected `int` >= 100`."""
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return f"event: {message}"
    return f"{where.rstrip('`').lstrip('.') or 'event'}: {text}"


def derived_id(data: dict[str, Any]) -> str:
    """Deterministic id for an event sent without one: same content, same id, across formats."""
    digest = hashlib.sha256(encode(data, orjson.OPT_SORT_KEYS)).hexdigest()
    return "sha256-" + digest[:40]


def encode(data: dict[str, Any], option: int = 0) -> bytes:
    """The event as JSON; EventInvalid when orjson cannot encode it (nested too deep)."""
    try:
        return orjson.dumps(data, option=option)
    except orjson.JSONEncodeError as exc:
        raise EventInvalid(f"event cannot be stored: {exc} (events nest at most "
                           f"{MAX_EVENT_DEPTH} levels)") from None
