"""The webhook API, health endpoints, metrics and CLI against real receiver processes."""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from receiver import ReceiverProcess, free_port
from standardwebhooks.webhooks import Webhook

from ingest.receive.signing import sign
from ingest.store import Reader
from ingest.testing import SECRET, signed

pytestmark = pytest.mark.integration

PATH = "/webhooks/holysheep"
MAX_BODY = 65536  # INGEST_MAX_BODY_BYTES of the shared receiver (conftest.API_ENV)
TOLERANCE_S = 300  # the default INGEST_SIGNATURE_TOLERANCE_S
OLD_SECRET = "rotation-old-secret-7f3a9c"
NEW_SECRET = "whsec_" + base64.b64encode(b"rotation-new-secret-bytes-0123456").decode()
CLI_TIMEOUT_S = 60

Post = Callable[..., httpx.Response]


def new_id(prefix: str = "evt") -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def event(event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A realistic relay event with a fresh id unless one is given."""
    return {
        "id": event_id or new_id(),
        "type": "holysheep_request",
        "model": "gpt-4o-mini",
        "status_code": 200,
        "latency_ms": 73.5,
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
        "cost_usd": 0.000036,
        "user_metadata": {"user_id": "user_001", "trace_id": uuid.uuid4().hex[:16]},
        "timestamp": int(time.time() * 1000),
        **extra,
    }


def stored(reader: Reader, event_id: str) -> list[dict[str, Any]]:
    return reader.search(event_id=event_id, limit=5)


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    code: str = response.json()["error"]
    return code


def webhook_counts(http: httpx.Client) -> dict[str, float]:
    """`ingest_webhooks_total` by outcome, scraped from /metrics."""
    response = http.get("/metrics")
    assert response.status_code == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "ingest_webhooks_total":
                # Refusals by their error code, per-event outcomes by name.
                found[sample.labels["reason"] or sample.labels["outcome"]] = sample.value
    return found


def clean_env(**values: str) -> dict[str, str]:
    """The current environment without any INGEST_* variable, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    return {**env, **values}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, env=env or clean_env(), check=False)


@pytest.fixture(scope="module")
def sent_signatures() -> set[str]:
    """Every signature value sent to the shared receiver, for the log check."""
    return set()


@pytest.fixture
def post(client: httpx.Client, sent_signatures: set[str]) -> Post:
    """POST to the webhook, remembering any signature header sent."""

    def _post(content: bytes | Iterator[bytes], headers: dict[str, str] | None = None,
              ) -> httpx.Response:
        headers = headers or {}
        for name, value in headers.items():
            if name.lower() in ("x-holysheep-signature", "webhook-signature"):
                sent_signatures.add(value)
        return client.post(PATH, content=content, headers=headers)

    return _post


@pytest.fixture(scope="module")
def rotating(module_receivers: Callable[..., ReceiverProcess]) -> ReceiverProcess:
    """A receiver in the middle of a rotation: the old secret and the new one both verify."""
    return module_receivers(secret=f"{OLD_SECRET},{NEW_SECRET}")


# 401 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop", ["both", "X-HolySheep-Signature", "X-HolySheep-Timestamp"])
def test_missing_signature_headers_are_401(post: Post, reader: Reader, drop: str) -> None:
    doc = event()
    body, headers = signed(doc)
    if drop == "both":
        headers = {"Content-Type": "application/json"}
    else:
        del headers[drop]
    response = post(body, headers)
    assert response.status_code == 401
    assert error_code(response) == "missing_signature"
    assert stored(reader, doc["id"]) == []


@pytest.mark.parametrize("header, value", [
    ("X-HolySheep-Signature", "not-hex-at-all"),
    ("X-HolySheep-Signature", "ab" * 31),  # 62 hex chars: too short for HMAC-SHA256
    ("X-HolySheep-Timestamp", "yesterday"),
    ("X-HolySheep-Timestamp", str(int(time.time() * 1000))),  # milliseconds, not seconds
])
def test_malformed_signature_headers_are_401(post: Post, reader: Reader, header: str,
                                             value: str) -> None:
    doc = event()
    body, headers = signed(doc)
    headers[header] = value
    response = post(body, headers)
    assert response.status_code == 401
    assert error_code(response) == "malformed_signature"
    assert stored(reader, doc["id"]) == []


@pytest.mark.parametrize("offset_s", [-(TOLERANCE_S + 60), TOLERANCE_S + 60])
def test_stale_timestamp_both_directions_is_401(post: Post, reader: Reader,
                                                offset_s: int) -> None:
    doc = event()
    body, headers = signed(doc, timestamp=int(time.time()) + offset_s)
    response = post(body, headers)
    assert response.status_code == 401
    assert error_code(response) == "stale_timestamp"
    assert stored(reader, doc["id"]) == []


def test_timestamp_within_tolerance_is_accepted(post: Post, reader: Reader) -> None:
    doc = event()
    body, headers = signed(doc, timestamp=int(time.time()) - (TOLERANCE_S - 60))
    response = post(body, headers)
    assert response.status_code == 202, response.text
    assert len(stored(reader, doc["id"])) == 1


def test_wrong_secret_is_401(post: Post, reader: Reader) -> None:
    doc = event()
    body, headers = signed(doc, secret="not-the-configured-secret")
    response = post(body, headers)
    assert response.status_code == 401
    assert error_code(response) == "signature_mismatch"
    assert stored(reader, doc["id"]) == []


def test_tampered_body_is_401(post: Post, reader: Reader) -> None:
    doc = event(cost_usd=0.5)
    body, headers = signed(doc)
    tampered = body.replace(b'"cost_usd":0.5', b'"cost_usd":0.0')
    assert tampered != body
    response = post(tampered, headers)
    assert response.status_code == 401
    assert error_code(response) == "signature_mismatch"
    assert stored(reader, doc["id"]) == []


def test_signature_over_reserialised_json_is_401(post: Post, reader: Reader) -> None:
    """Same event, different bytes (whitespace): the signature is over the raw bytes."""
    doc = event()
    _, headers = signed(doc)
    response = post(orjson.dumps(doc, option=orjson.OPT_INDENT_2), headers)
    assert response.status_code == 401
    assert error_code(response) == "signature_mismatch"
    assert stored(reader, doc["id"]) == []


# 413, 415, 400, 422 -------------------------------------------------------------------------

def test_body_over_limit_by_content_length_is_413(post: Post, reader: Reader) -> None:
    doc = event(padding="x" * (MAX_BODY + 100))
    body, headers = signed(doc)
    assert len(body) > MAX_BODY
    response = post(body, headers)
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert stored(reader, doc["id"]) == []


def test_streamed_body_over_limit_without_content_length_is_413(post: Post) -> None:
    doc = event(padding="x" * (MAX_BODY + 100))
    body, headers = signed(doc)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    response = post(chunks(), headers)  # an iterator goes out chunked, with no Content-Length
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


def test_gzip_bomb_is_413(post: Post, reader: Reader) -> None:
    doc = event(padding=" " * (40 * MAX_BODY))
    compressed = gzip.compress(orjson.dumps(doc), 9)
    assert len(compressed) < MAX_BODY // 10
    body, headers = signed(compressed)
    headers["Content-Encoding"] = "gzip"
    response = post(body, headers)
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert stored(reader, doc["id"]) == []


@pytest.mark.parametrize("header, value", [
    ("Content-Type", "text/plain"),
    ("Content-Type", "application/x-www-form-urlencoded"),
    ("Content-Encoding", "br"),
])
def test_unsupported_media_type_is_415(post: Post, reader: Reader, header: str,
                                       value: str) -> None:
    doc = event()
    body, headers = signed(doc)
    headers[header] = value
    response = post(body, headers)
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"
    assert stored(reader, doc["id"]) == []


@pytest.mark.parametrize("body, encoding", [
    (b'{"id": "broken", "model": ', None),
    (b"[]", None),
    (b"this is not gzip", "gzip"),
])
def test_malformed_payload_is_400(post: Post, body: bytes, encoding: str | None) -> None:
    raw, headers = signed(body)
    if encoding:
        headers["Content-Encoding"] = encoding
    response = post(raw, headers)
    assert response.status_code == 400
    assert error_code(response) == "malformed_payload"


def test_all_events_invalid_is_422_and_quarantined(post: Post, reader: Reader) -> None:
    bad_id = new_id("bad")
    batch = [{"id": bad_id, "status_code": "not-a-status"}, 42]
    body, headers = signed(batch)
    response = post(body, headers)
    assert response.status_code == 422
    answer = response.json()
    assert answer["accepted"] == 0
    assert answer["quarantined"] == 2
    assert [e["index"] for e in answer["errors"]] == [0, 1]
    assert "status_code" in answer["errors"][0]["reason"]
    assert stored(reader, bad_id) == []
    reasons = {q["reason"] for q in reader.quarantined(limit=100) if bad_id in q["raw"]}
    assert len(reasons) == 1
    assert "status_code" in reasons.pop()


# 202 ----------------------------------------------------------------------------------------

def test_single_event_is_202_and_stored_enriched(post: Post, reader: Reader) -> None:
    doc = event(custom_field={"kept": True}, latency_ms=180.0)
    body, headers = signed(doc)
    response = post(body, headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    found = stored(reader, doc["id"])
    assert len(found) == 1
    saved = found[0]
    assert saved["id"] == doc["id"]
    assert saved["model"] == "gpt-4o-mini"
    assert saved["custom_field"] == {"kept": True}
    assert saved["latency_bucket"] == "normal"
    assert saved["tokens_used"] == 150
    assert saved["user_metadata"] == doc["user_metadata"]
    assert saved["timestamp_source"] == "event"
    assert saved["_state"] == "pending"


def test_json_array_batch_is_202(post: Post, reader: Reader) -> None:
    docs = [event(), event(status_code=429, error={"message": "rate limited"}), event()]
    body, headers = signed(docs)
    response = post(body, headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "duplicates": 0, "quarantined": 0}
    for doc in docs:
        assert [d["id"] for d in stored(reader, doc["id"])] == [doc["id"]]
    limited = stored(reader, docs[1]["id"])[0]
    assert {"error", "rate_limited"} <= set(limited["tags"])


def test_ndjson_batch_with_bad_line_quarantines_it(post: Post, reader: Reader) -> None:
    good = [event(), event(), event()]
    bad_line = b'{"id": "' + new_id("ndbad").encode() + b'", "model": gpt-4o'
    lines = [orjson.dumps(good[0]), orjson.dumps(good[1]), bad_line, orjson.dumps(good[2])]
    body, headers = signed(b"\n".join(lines) + b"\n", content_type="application/x-ndjson")
    response = post(body, headers)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 3
    assert answer["duplicates"] == 0
    assert answer["quarantined"] == 1
    assert [e["index"] for e in answer["errors"]] == [2]
    for doc in good:
        assert len(stored(reader, doc["id"])) == 1
    matches = [q for q in reader.quarantined(limit=100) if q["raw"] == bad_line.decode()]
    assert len(matches) == 1
    assert "not valid JSON" in matches[0]["reason"]


@pytest.mark.parametrize("signed_over", ["compressed", "decompressed"])
def test_gzip_body_is_202(post: Post, reader: Reader, signed_over: str) -> None:
    docs = [event(), event()]
    plain = orjson.dumps(docs)
    compressed = gzip.compress(plain)
    _, headers = signed(compressed if signed_over == "compressed" else plain)
    headers["Content-Encoding"] = "gzip"
    response = post(compressed, headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
    for doc in docs:
        assert len(stored(reader, doc["id"])) == 1


def test_same_id_twice_is_stored_once(post: Post, reader: Reader) -> None:
    doc = event()
    body, headers = signed(doc)
    first = post(body, headers)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    # A relay retry: same id, later signature, and even a changed field.
    body, headers = signed({**doc, "latency_ms": 999.0})
    second = post(body, headers)
    assert second.status_code == 202, second.text
    assert second.json() == {"accepted": 0, "duplicates": 1, "quarantined": 0}
    found = stored(reader, doc["id"])
    assert len(found) == 1
    assert found[0]["latency_ms"] == doc["latency_ms"]


def test_duplicate_inside_one_batch_is_stored_once(post: Post, reader: Reader) -> None:
    doc = event()
    body, headers = signed([doc, doc, event()])
    response = post(body, headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "duplicates": 1, "quarantined": 0}
    assert len(stored(reader, doc["id"])) == 1


def test_event_without_id_is_deduplicated_by_content(post: Post, reader: Reader) -> None:
    doc = event()
    del doc["id"]
    first_body, headers = signed(doc)
    first = post(first_body, headers)
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == 1
    body, headers = signed(orjson.dumps(doc) + b"\n", content_type="application/x-ndjson")
    again = post(body, headers)
    assert again.status_code == 202, again.text
    assert again.json() == {"accepted": 0, "duplicates": 1, "quarantined": 0}
    found = reader.search(trace=doc["user_metadata"]["trace_id"], limit=5)
    assert len(found) == 1
    assert found[0]["id_source"] == "derived"


def standard_headers(webhook: Webhook, body: bytes, msg_id: str | None = None,
                     timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    msg_id = msg_id or new_id("msg")
    signature = webhook.sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_standard_webhooks_signature_is_accepted(post: Post, reader: Reader) -> None:
    doc = event()
    body = orjson.dumps(doc)
    headers = standard_headers(Webhook(SECRET.encode()), body)
    assert headers["webhook-signature"].startswith("v1,")
    # Several signatures may be sent (rotation on the sender's side); one matching is enough.
    headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode() + " " + (
        headers["webhook-signature"])
    response = post(body, headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    assert len(stored(reader, doc["id"])) == 1


def test_standard_webhooks_wrong_or_stale_is_401(post: Post, reader: Reader) -> None:
    doc = event()
    body = orjson.dumps(doc)
    wrong = standard_headers(Webhook(b"some-other-secret"), body)
    stale = standard_headers(Webhook(SECRET.encode()), body,
                             timestamp=int(time.time()) - TOLERANCE_S - 60)
    tampered = standard_headers(Webhook(SECRET.encode()), body)
    assert error_code(post(body, wrong)) == "signature_mismatch"
    assert error_code(post(body, stale)) == "stale_timestamp"
    assert error_code(post(body.replace(b"gpt-4o-mini", b"gpt-4o-maxi"), tampered)) == (
        "signature_mismatch")
    assert stored(reader, doc["id"]) == []


def test_secret_rotation_both_secrets_verify(rotating: ReceiverProcess) -> None:
    with httpx.Client(base_url=rotating.url, timeout=10.0) as http:
        old_doc, new_doc, other_doc, std_doc = event(), event(), event(), event()
        for doc, secret in ((old_doc, OLD_SECRET), (new_doc, NEW_SECRET)):
            body, headers = signed(doc, secret=secret)
            response = http.post(PATH, content=body, headers=headers)
            assert response.status_code == 202, response.text
        body, headers = signed(other_doc, secret=SECRET)
        response = http.post(PATH, content=body, headers=headers)
        assert response.status_code == 401
        assert error_code(response) == "signature_mismatch"
        # The whsec_ secret also verifies Standard Webhooks signatures, decoded as the spec says.
        body = orjson.dumps(std_doc)
        response = http.post(PATH, content=body,
                             headers=standard_headers(Webhook(NEW_SECRET), body))
        assert response.status_code == 202, response.text
    reader = Reader(rotating.data_dir)
    try:
        for doc in (old_doc, new_doc, std_doc):
            assert len(stored(reader, doc["id"])) == 1
        assert stored(reader, other_doc["id"]) == []
    finally:
        reader.close()
    log = rotating.log()
    assert OLD_SECRET not in log
    assert NEW_SECRET not in log


# health, readiness, metrics, logs -----------------------------------------------------------

def test_healthz_and_readyz(client: httpx.Client) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "store": "writable"}


def test_metrics_count_outcomes(client: httpx.Client, post: Post) -> None:
    before = webhook_counts(client)
    docs = [event(), event()]
    body, headers = signed(docs)
    assert post(body, headers).status_code == 202
    body, headers = signed(docs[0])
    assert post(body, headers).status_code == 202  # duplicate
    ndjson = orjson.dumps(event()) + b"\n{oops\n"
    body, headers = signed(ndjson, content_type="application/x-ndjson")
    assert post(body, headers).status_code == 202  # one accepted, one quarantined
    body, headers = signed(event())
    assert post(body, {"Content-Type": "application/json"}).status_code == 401
    assert post(body + b" ", headers).status_code == 401
    assert post(body, {**headers, "Content-Type": "text/csv"}).status_code == 415
    bad, headers = signed(b"{nope")
    assert post(bad, headers).status_code == 400
    after = webhook_counts(client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    expected = {"accepted": 3, "duplicate": 1, "quarantined": 1, "missing_signature": 1,
                "signature_mismatch": 1, "unsupported_media_type": 1, "malformed_payload": 1}
    assert {k: v for k, v in delta.items() if v} == expected


def test_log_never_contains_secret_or_signatures(receiver: ReceiverProcess, post: Post,
                                                 sent_signatures: set[str]) -> None:
    # Traffic of every kind, so the log has had every chance to leak.
    doc = event()
    body, headers = signed(doc)
    assert post(body, headers).status_code == 202
    assert post(body + b"x", headers).status_code == 401
    _, wrong = signed(doc, secret="a-wrong-secret")
    assert post(body, wrong).status_code == 401
    std = standard_headers(Webhook(SECRET.encode()), body)
    assert post(body, std).status_code == 202
    assert post(b"{", signed(b"{")[1]).status_code == 400
    log = receiver.log()
    assert "webhook refused" in log  # debug logging is on: the log is not trivially empty
    assert SECRET not in log
    assert len(sent_signatures) >= 4
    for value in sent_signatures:
        for part in value.replace(",", " ").split():
            if len(part) >= 16:  # signatures, not the "v1" version tags
                assert part not in log, f"signature {part!r} found in the receiver log"
    assert sign(SECRET, headers["X-HolySheep-Timestamp"], body) not in log


# process and CLI ----------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [None, "", " , "])
def test_serve_without_secret_exits_nonzero(tmp_path: Path, secret: str | None) -> None:
    env = clean_env() if secret is None else clean_env(INGEST_WEBHOOK_SECRET=secret)
    result = run_cli("serve", "--host", "127.0.0.1", "--port", str(free_port()),
                     "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode != 0
    assert "INGEST_WEBHOOK_SECRET" in result.stderr


@pytest.mark.parametrize("secret", ["whsec_", "whsec_a", "good-secret,whsec_!!!"])
def test_serve_with_unusable_whsec_secret_exits_with_config_error(tmp_path: Path,
                                                                  secret: str) -> None:
    result = run_cli("serve", "--host", "127.0.0.1", "--port", str(free_port()),
                     "--data-dir", str(tmp_path / "data"),
                     env=clean_env(INGEST_WEBHOOK_SECRET=secret))
    assert result.returncode == 2, result.stderr  # the CLI's exit code for a ConfigError
    assert "INGEST_WEBHOOK_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_search_text_ignores_case_beyond_ascii(receiver: ReceiverProcess, post: Post) -> None:
    """`--text` is documented case-insensitive; the relay's users write Vietnamese error text."""
    tag = uuid.uuid4().hex[:12]
    doc = event(status_code=500, error={"message": f"LỖI KẾT NỐI upstream {tag}"})
    body, headers = signed(doc)
    assert post(body, headers).status_code == 202
    for text in (f"LỖI KẾT NỐI upstream {tag}", f"lỗi kết nối upstream {tag}"):
        result = run_cli("search", "--data-dir", str(receiver.data_dir), "--json",
                         "--text", text)
        assert result.returncode == 0, f"--text {text!r}: {result.stderr.strip()}"
        assert [orjson.loads(line)["id"] for line in result.stdout.splitlines()] == [doc["id"]]


def test_cli_search(receiver: ReceiverProcess, post: Post) -> None:
    tag = uuid.uuid4().hex[:12]
    user, trace = f"user_{tag}", f"trace_{tag}"
    doc = event(status_code=502, error={"message": f"Upstream Exploded {tag}"},
                user_metadata={"user_id": user, "trace_id": trace})
    other = event(user_metadata={"user_id": user, "trace_id": f"other_{tag}"})
    body, headers = signed([doc, other])
    assert post(body, headers).status_code == 202
    data_dir = str(receiver.data_dir)

    def search(*args: str) -> list[dict[str, Any]]:
        result = run_cli("search", "--data-dir", data_dir, "--json", *args)
        assert result.returncode == 0, result.stderr
        return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]

    by_id = search("--id", doc["id"])
    assert len(by_id) == 1
    assert by_id[0]["id"] == doc["id"]
    assert by_id[0]["error"]["message"] == f"Upstream Exploded {tag}"
    assert by_id[0]["status_code"] == 502
    assert {d["id"] for d in search("--user", user)} == {doc["id"], other["id"]}
    assert [d["id"] for d in search("--trace", trace)] == [doc["id"]]
    assert [d["id"] for d in search("--text", f"exploded {tag.upper()}")] == [doc["id"]]
    assert [d["id"] for d in search("--user", user, "--text", "exploded")] == [doc["id"]]
    missing = run_cli("search", "--data-dir", data_dir, "--json", "--id", new_id("absent"))
    assert missing.returncode == 1
    assert missing.stdout == ""


@pytest.mark.parametrize("seed, options", [
    (4242, ()),
    (4343, ("--batch", "7", "--ndjson", "--gzip")),
])
def test_cli_send_stores_every_event(receiver: ReceiverProcess, reader: Reader, seed: int,
                                     options: tuple[str, ...]) -> None:
    count = 60
    before = reader.counts()["pending"]
    result = run_cli("send", receiver.url, "--count", str(count), "--quiet", "--seed", str(seed),
                     *options, env=clean_env(INGEST_WEBHOOK_SECRET=SECRET))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"accepted {count}, duplicates 0, quarantined 0" in result.stderr
    assert reader.counts()["pending"] - before == count
    for index in range(count):
        assert len(stored(reader, f"req_s{seed}_{index:08d}")) == 1
