"""The webhook endpoint in process: httpx's ASGI transport, a real store, an injected clock."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook

from ingest.metrics import Metrics
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook, Rate
from ingest.receive.webhook import WebhookEndpoint
from ingest.store import Budget, Reader, Store

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
SECRET = "test-secret-for-unit-tests"
OTHER_SECRET = "rotated-in-secret"
MAX_BODY = 64 << 10
RETRY_AFTER = 7
URL = "http://receiver.test/webhooks/holysheep"


def hmac_hex(secret: str, timestamp: int | str, body: bytes) -> str:
    """The HolySheep signature, computed here independently of ingest.signing."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed(body: bytes, *, secret: str = SECRET, timestamp: int | str = int(NOW),
           content_type: str = "application/json", signed_over: bytes | None = None,
           **extra: str) -> dict[str, str]:
    over = body if signed_over is None else signed_over
    return {"Content-Type": content_type, "X-HolySheep-Timestamp": str(timestamp),
            "X-HolySheep-Signature": hmac_hex(secret, timestamp, over), **extra}


def event(event_id: str = "req_1", **fields) -> dict:
    base = {"id": event_id, "type": "holysheep_request", "model": "gpt-4o", "status_code": 200,
            "latency_ms": 120.0, "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
            "cost_usd": 0.0075, "user_metadata": {"user_id": "u1", "trace_id": "t1"},
            "timestamp": NOW_MS - 1000}
    base.update(fields)
    return base


class Harness:
    def __init__(self, store: Store, secrets: tuple[str, ...] = (SECRET,)) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        prices = PriceBook({"gpt-4o": Rate(2.5, 10.0, "override")}, lookup=None)
        self.endpoint = WebhookEndpoint(
            secrets=list(secrets), tolerance_s=300, max_body_bytes=MAX_BODY, store=store,
            enricher=Enricher.default(prices), metrics=Metrics(self.registry),
            clock=lambda: NOW, retry_after_s=RETRY_AFTER)

    async def post(self, content, headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.endpoint)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post(URL, content=content, headers=headers)

    def post_sync(self, content, headers: dict[str, str]) -> httpx.Response:
        return asyncio.run(self.post(content, headers))

    def outcome(self, name: str) -> float | None:
        """Per-event outcomes by name, refusals by their error code (the `reason` label)."""
        for outcome in ("accepted", "duplicate", "quarantined"):
            if name == outcome:
                return self.registry.get_sample_value(
                    "ingest_webhooks_total", {"outcome": name, "reason": ""})
        found = [s.value for metric in self.registry.collect() for s in metric.samples
                 if s.name == "ingest_webhooks_total" and s.labels["reason"] == name]
        return sum(found) if found else None

    def unpriced(self) -> float | None:
        return self.registry.get_sample_value("ingest_unpriced_events_total")

    def reader(self) -> Reader:
        return Reader(self.store.path.parent)

    def counts(self) -> dict[str, int]:
        r = self.reader()
        try:
            return r.counts()
        finally:
            r.close()

    def quarantine(self) -> list[dict]:
        r = self.reader()
        try:
            return r.quarantined(limit=1000)
        finally:
            r.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data", budget=Budget(min_free_bytes=0))
    s.start()
    yield s
    s.close()


@pytest.fixture
def hook(store) -> Harness:
    return Harness(store)


def test_one_event_is_accepted_and_stored(hook):
    body = orjson.dumps(event())
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert hook.outcome("accepted") == 1
    assert hook.outcome("duplicate") == 0
    r = hook.reader()
    try:
        (doc,) = r.search(event_id="req_1")
    finally:
        r.close()
    assert doc["latency_bucket"] == "normal"
    assert doc["computed_cost_usd"] == pytest.approx(0.0075)
    assert doc["cost_mismatch"] is False
    assert doc["timestamp_source"] == "event"
    assert doc["received_at"] == "2023-11-14T22:13:20.000Z"


def test_a_retry_is_a_duplicate_not_a_second_event(hook):
    body = orjson.dumps(event())

    async def scenario():
        return [await hook.post(body, signed(body)) for _ in range(3)]

    first, second, third = asyncio.run(scenario())
    assert first.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert second.status_code == third.status_code == 202
    assert second.json() == {"accepted": 0, "duplicates": 1, "quarantined": 0}
    assert hook.outcome("accepted") == 1
    assert hook.outcome("duplicate") == 2
    assert hook.counts()["pending"] == 1


def test_batch_with_invalid_members_accepts_the_rest(hook):
    body = orjson.dumps([event("a"), event("b", status_code=900), 7, event("a"), event("c")])
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 202
    answer = response.json()
    assert {k: answer[k] for k in ("accepted", "duplicates", "quarantined")} == {
        "accepted": 2, "duplicates": 1, "quarantined": 2}
    assert [e["index"] for e in answer["errors"]] == [1, 2]
    assert answer["errors"][0]["reason"].startswith("status_code: ")
    assert answer["errors"][1]["reason"] == "event must be a JSON object"
    assert hook.outcome("accepted") == 2
    assert hook.outcome("duplicate") == 1
    assert hook.outcome("quarantined") == 2
    assert hook.counts() == {"pending": 2, "shipped": 0, "dead": 0, "quarantined": 2}


def test_an_id_over_512_utf8_bytes_is_quarantined_with_its_raw_bytes(hook):
    # 300 characters, 600 bytes: Elasticsearch would refuse the whole bulk request for it.
    long_id = "é" * 300
    assert len(long_id) < 512 < len(long_id.encode())
    body = orjson.dumps([event("fits-" + "é" * 250), event(long_id)])
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 202
    answer = response.json()
    assert (answer["accepted"], answer["quarantined"]) == (1, 1)
    [error] = answer["errors"]
    assert error["index"] == 1 and error["reason"].startswith("id: ")
    reader = hook.reader()
    try:
        [kept] = reader.quarantined()
    finally:
        reader.close()
    assert orjson.loads(kept["raw"])["id"] == long_id
    assert hook.counts() == {"pending": 1, "shipped": 0, "dead": 0, "quarantined": 1}


def test_ndjson_batch(hook):
    body = b"\n".join(orjson.dumps(event(f"n{i}")) for i in range(4)) + b"\n"
    response = hook.post_sync(body, signed(body, content_type="application/x-ndjson"))
    assert response.status_code == 202
    assert response.json()["accepted"] == 4


def test_every_event_invalid_is_422_and_quarantined(hook):
    body = orjson.dumps([{"id": "x", "status_code": 42}, "nope"])
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 422
    answer = response.json()
    assert (answer["accepted"], answer["duplicates"], answer["quarantined"]) == (0, 0, 2)
    assert len(answer["errors"]) == 2
    assert hook.outcome("quarantined") == 2
    assert hook.outcome("accepted") == 0
    assert hook.counts()["quarantined"] == 2


@pytest.mark.parametrize(("make_headers", "code"), [
    (lambda body: {"Content-Type": "application/json"}, "missing_signature"),
    (lambda body: {"Content-Type": "application/json",
                   "X-HolySheep-Timestamp": str(int(NOW))}, "missing_signature"),
    (lambda body: signed(body, timestamp=NOW_MS), "malformed_signature"),
    (lambda body: {**signed(body), "X-HolySheep-Signature": "not-hex"}, "malformed_signature"),
    (lambda body: signed(body, timestamp=int(NOW) - 301), "stale_timestamp"),
    (lambda body: signed(body, timestamp=int(NOW) + 301), "stale_timestamp"),
    (lambda body: signed(body, secret="wrong"), "signature_mismatch"),
    (lambda body: signed(body + b" "), "signature_mismatch"),
    (lambda body: {"Content-Type": "application/json", "webhook-id": "m",
                   "webhook-timestamp": str(int(NOW)),
                   "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
     "signature_mismatch"),
])
def test_401_names_the_reason(hook, make_headers, code):
    body = orjson.dumps(event())
    response = hook.post_sync(body, make_headers(body))
    assert response.status_code == 401
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert hook.outcome(code) == 1
    assert hook.outcome("accepted") == 0
    assert hook.counts()["pending"] == 0


def test_the_tolerance_boundary_is_accepted(hook):
    body = orjson.dumps(event())
    assert hook.post_sync(body, signed(body, timestamp=int(NOW) - 300)).status_code == 202


def test_standard_webhooks_headers_are_accepted(hook):
    body = orjson.dumps(event("std"))
    signature = Webhook(SECRET.encode()).sign("msg_1", datetime.fromtimestamp(NOW, tz=UTC),
                                              body.decode())
    headers = {"Content-Type": "application/json", "webhook-id": "msg_1",
               "webhook-timestamp": str(int(NOW)), "webhook-signature": signature}
    response = hook.post_sync(body, headers)
    assert response.status_code == 202
    assert response.json()["accepted"] == 1


def test_any_configured_secret_is_accepted(store):
    hook = Harness(store, secrets=(SECRET, OTHER_SECRET))
    body = orjson.dumps(event("rot"))
    assert hook.post_sync(body, signed(body, secret=OTHER_SECRET)).status_code == 202
    assert hook.post_sync(body, signed(body, secret="retired")).status_code == 401


def test_413_by_content_length(hook):
    body = b"[" + b" " * MAX_BODY + b"]"
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert hook.outcome("payload_too_large") == 1


def test_413_from_the_content_length_header_alone(hook):
    body = orjson.dumps(event())
    headers = {**signed(body), "Content-Length": str(MAX_BODY + 1)}
    response = hook.post_sync(body, headers)
    assert response.status_code == 413


def test_413_for_a_streamed_body_without_content_length(hook):
    chunk = b" " * 4096

    async def stream():
        yield b"["
        for _ in range(MAX_BODY // len(chunk) + 1):
            yield chunk
        yield b"]"

    async def scenario():
        return await hook.post(stream(), {"Content-Type": "application/json",
                                          "X-HolySheep-Timestamp": str(int(NOW)),
                                          "X-HolySheep-Signature": "0" * 64})

    response = asyncio.run(scenario())
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_413_by_decompressed_size(hook):
    bomb = gzip.compress(b"[" + b" " * (4 * MAX_BODY) + b"]", 9)
    assert len(bomb) < MAX_BODY
    response = hook.post_sync(bomb, signed(bomb, **{"Content-Encoding": "gzip"}))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_gzip_signed_over_compressed_bytes(hook):
    raw = orjson.dumps(event("gz1"))
    body = gzip.compress(raw)
    response = hook.post_sync(body, signed(body, **{"Content-Encoding": "gzip"}))
    assert response.status_code == 202
    assert response.json()["accepted"] == 1


def test_gzip_signed_over_decompressed_bytes(hook):
    raw = orjson.dumps(event("gz2"))
    body = gzip.compress(raw)
    response = hook.post_sync(body, signed(body, signed_over=raw, **{"Content-Encoding": "gzip"}))
    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    r = hook.reader()
    try:
        assert [d["id"] for d in r.search(event_id="gz2")] == ["gz2"]
    finally:
        r.close()


def test_gzip_with_a_wrong_signature_is_401_even_when_the_gzip_is_bad(hook):
    # Verify before parsing anything: a request nobody signed learns nothing about its body.
    body = b"\x1f\x8b\x08\x00 this is not deflate data"
    response = hook.post_sync(body, signed(body, secret="wrong", **{"Content-Encoding": "gzip"}))
    assert response.status_code == 401
    assert response.json()["error"] == "signature_mismatch"


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Content-Type": "application/json", "Content-Encoding": "br"},
])
def test_415(hook, headers):
    body = orjson.dumps(event())
    response = hook.post_sync(body, signed(body, **headers))
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert hook.outcome("unsupported_media_type") == 1


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b"\n\n"])
def test_400_for_a_signed_body_that_is_not_events(hook, body):
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_payload"
    assert hook.outcome("malformed_payload") == 1
    # Signed, so kept with its reason; an empty body has nothing to keep.
    kept = hook.quarantine()
    if body.strip():
        assert [(q["raw"], q["reason"]) for q in kept] == [
            (body.decode(), response.json()["message"])]
    else:
        assert kept == []


def test_400_for_signed_bad_gzip(hook):
    body = b"\x1f\x8b\x08\x00 this is not deflate data"
    response = hook.post_sync(body, signed(body, **{"Content-Encoding": "gzip"}))
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_payload"
    assert [q["reason"] for q in hook.quarantine()] == [response.json()["message"]]


def test_an_unsigned_malformed_body_is_not_kept(hook):
    body = b"{not json"
    response = hook.post_sync(body, signed(body, secret="not-the-secret"))
    assert response.status_code == 401
    assert hook.quarantine() == []


def test_503_with_retry_after_when_the_store_is_full(hook):
    hook.store.full_reason = "the store holds too much (test)"
    body = orjson.dumps(event())
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    assert response.json() == {"error": "store_full",
                               "message": "the store holds too much (test)"}
    assert hook.outcome("store_full") == 1
    assert hook.outcome("accepted") == 0
    hook.store.full_reason = None
    assert hook.post_sync(body, signed(body)).status_code == 202


def test_503_when_the_store_is_closed(hook):
    hook.store.close()
    body = orjson.dumps(event())
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    assert response.json()["error"] == "store_unavailable"
    assert hook.outcome("store_unavailable") == 1


def test_unpriced_events_are_counted(hook):
    body = orjson.dumps([event("p1"), event("u1", model="mystery-model"),
                         event("u2", model="mystery-model"), event("n1", usage=None)])
    response = hook.post_sync(body, signed(body))
    assert response.json()["accepted"] == 4
    assert hook.unpriced() == 2
    # A duplicate of an unpriced event is not counted again.
    again = orjson.dumps(event("u1", model="mystery-model"))
    hook.post_sync(again, signed(again))
    assert hook.unpriced() == 2


def test_a_garbage_event_timestamp_does_not_cost_the_event(hook):
    body = orjson.dumps([event("g1", timestamp="--1"), event("g2", timestamp="²")])
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 202
    assert response.json()["accepted"] == 2
    r = hook.reader()
    try:
        docs = r.search()
    finally:
        r.close()
    assert {d["timestamp_source"] for d in docs} == {"received"}


def test_concurrent_requests_from_one_loop(hook):
    bodies = [orjson.dumps([event(f"c{i % 25}"), event(f"d{i}")]) for i in range(60)]

    async def scenario():
        return await asyncio.gather(*(hook.post(b, signed(b)) for b in bodies))

    responses = asyncio.run(scenario())
    assert all(r.status_code == 202 for r in responses)
    assert sum(r.json()["accepted"] for r in responses) == 25 + 60
    assert sum(r.json()["duplicates"] for r in responses) == 60 - 25
    assert hook.outcome("accepted") == 85
    assert hook.counts()["pending"] == 85


# Bodies a hostile or broken sender can sign: each gets a clear 4xx or is quarantined, never 500.

def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * (depth - 1) + inner + b"]" * (depth - 1)


@pytest.mark.parametrize(("body", "content_type"), [
    (b"[" * 60_000, "application/json"),                         # never closed
    (b"[1,,2]", "application/json"),                              # an array, but not JSON
    (b'{"a":' * 2000 + b"1" + b"}" * 2000, "application/json"),  # past orjson's 1,024 levels
    (b'{"id":"a","latency_ms":' + b"9" * 400 + b"}", "application/json"),  # overflows a double
    (b'{"id":"a","latency_ms":NaN}', "application/json"),
    (b'{"id":"a","latency_ms":Infinity}', "application/json"),
    (b'\xef\xbb\xbf{"id":"a"}', "application/json"),             # UTF-8 byte order mark
    (b'{"id":"a\xff\xfe"}', "application/json"),                  # invalid UTF-8
    (b'{"id":"\\ud800"}', "application/json"),                    # lone surrogate
    (b"\x00\x01\x02", "application/json"),
])
def test_unparseable_signed_bodies_are_400_and_kept(hook, body, content_type):
    response = hook.post_sync(body, signed(body, content_type=content_type))
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_payload"
    (kept,) = hook.quarantine()
    assert kept["raw"] == body.decode("utf-8", "replace")


@pytest.mark.parametrize("element", [
    _nested(5000),                                   # deeper than any decoder goes
    _nested(1000),                                   # between the array decoder's and orjson's
    b'{"id":"deep","x":' + _nested(400) + b"}",     # parses, but nests past the encoder's 254
    b'{"id":"a","latency_ms":"Infinity"}',          # a number sent as text must be finite
    b'{"id":"a","cost_usd":"inf"}',
    b'{"id":"a\xff"}',
    b'{"id":"\\udc00"}',
])
def test_a_bad_element_in_a_batch_is_quarantined_and_the_rest_stored(hook, element):
    good = orjson.dumps(event("good"))
    for body, content_type in ((b"[" + good + b"," + element + b"]", "application/json"),
                               (good + b"\n" + element + b"\n", "application/x-ndjson")):
        response = hook.post_sync(body, signed(body, content_type=content_type))
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["quarantined"] == 1
        assert answer["errors"][0]["index"] == 1
    assert hook.counts()["pending"] == 1
    (kept,) = hook.quarantine()  # the same bytes twice are kept once
    assert kept["raw"] == element.decode("utf-8", "replace")


def test_an_array_of_one_element_too_deep_is_a_batch_with_nothing_usable(hook):
    body = _nested(5000)
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 422
    assert "depth limit exceeded" in response.json()["errors"][0]["reason"]
    assert [q["raw"] for q in hook.quarantine()] == [body[1:-1].decode()]


def test_an_event_nested_at_the_limit_is_stored(hook):
    body = b'{"id":"edge","x":' + _nested(253) + b"}"   # the event object is level 1
    response = hook.post_sync(body, signed(body))
    assert response.status_code == 202
    assert response.json()["accepted"] == 1


def test_duplicate_keys_keep_the_last_value(hook):
    body = b'{"id":"first","id":"last","model":"gpt-4o"}'
    assert hook.post_sync(body, signed(body)).status_code == 202
    r = hook.reader()
    try:
        assert [d["id"] for d in r.search()] == ["last"]
    finally:
        r.close()


def test_a_fault_in_the_receiver_is_500_counted_and_logged_by_type_only(hook, caplog):
    async def broken_write(*args, **kwargs):
        raise RuntimeError("secret body text " + SECRET)

    hook.store.write = broken_write
    body = orjson.dumps(event())
    headers = signed(body)
    with caplog.at_level("ERROR", logger="ingest.webhook"):
        response = hook.post_sync(body, headers)
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert hook.outcome("internal_error") == 1
    (record,) = caplog.records
    assert "RuntimeError" in record.getMessage()
    logged = caplog.text
    for secret_part in (SECRET, "secret body text", headers["X-HolySheep-Signature"], "req_1"):
        assert secret_part not in logged


def test_an_event_our_enrichment_fails_on_is_quarantined_not_500(hook, caplog):
    def explode(draft):
        if draft.doc["id"] == "bad":
            raise ZeroDivisionError("boom")
        return draft

    hook.endpoint.enricher = Enricher([*hook.endpoint.enricher.processors, explode])
    body = orjson.dumps([event("ok"), event("bad")])
    with caplog.at_level("ERROR", logger="ingest.webhook"):
        response = hook.post_sync(body, signed(body))
    assert response.status_code == 202
    assert response.json()["errors"] == [
        {"index": 1, "reason": "event could not be processed: ZeroDivisionError"}]
    assert hook.outcome("unprocessable_event") == 1
    assert "ZeroDivisionError" in caplog.text and "boom" not in caplog.text
    assert hook.counts() == {**hook.counts(), "pending": 1, "quarantined": 1}
