"""The cluster client over HTTP, against the fault-injection `_bulk` server: how the client's
answers and exceptions are translated into RemoteUnavailable / RemoteRefused / VersionMismatch,
timeouts, the wire format, and that credentials reach the server but never an error.

FaultBulkServer is a test tool, not an Elasticsearch (the real-cluster suite is
tests/elasticsearch). The sink's narrowing and classification are unit-tested on FakeCluster.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from faults import FaultBulkServer
from receiver import free_port

from ingest import records
from ingest.elastic import CLIENT_MAJOR, CLIENT_VERSION, Connection
from ingest.errors import (
    ConfigError,
    RemoteError,
    RemoteRefused,
    RemoteUnavailable,
    VersionMismatch,
)
from ingest.records import Pending
from ingest.ship import bulk
from ingest.ship.elasticsearch import ElasticsearchSink
from ingest.testing import run_bounded as run

pytestmark = pytest.mark.integration

STREAM = "logs-holysheep.requests-default"
PASSWORD = "s3cr3t-pw"
API_KEY = "QXBpS2V5SWQ6czNjcjN0LWFwaS1rZXk="  # base64 of "ApiKeyId:s3cr3t-api-key"



def closed_url() -> str:
    """A 127.0.0.1 URL nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


async def call(conn: Connection, what: str, body: bytes = b"") -> Any:
    """Run one sink call on a fresh sink, always closed afterwards."""
    sink = ElasticsearchSink(conn)
    try:
        return await (sink.check_version() if what == "version" else sink.bulk(body))
    finally:
        await sink.close()


def fail(conn: Connection, what: str, body: bytes = b"") -> RemoteError:
    """The RemoteError a call raises (the test fails if it raises nothing or something else)."""
    async def scenario() -> RemoteError:
        with pytest.raises(RemoteError) as caught:
            await call(conn, what, body)
        return caught.value

    return run(scenario())


def items(*event_ids: str) -> list[Pending]:
    return [Pending(n, event_id, orjson.dumps({"id": event_id, "@timestamp": "2025-01-01"}),
                    b'{"raw":true}') for n, event_id in enumerate(event_ids, 1)]


def body_of(*event_ids: str) -> bytes:
    return b"".join(bulk.action(item, STREAM) for item in items(*event_ids))


# -- check_version -----------------------------------------------------------------------------


def test_check_version_returns_the_server_version(server: FaultBulkServer) -> None:
    assert run(call(Connection(server.url), "version")) == "9.1.0"
    assert server.requests_log == [("GET", "/", 0)]


def test_check_version_mismatch_names_both_versions() -> None:
    with FaultBulkServer(version="8.15.0") as old:
        error = fail(Connection(old.url), "version")
    assert type(error) is VersionMismatch
    assert "8.15.0" in error.message
    assert CLIENT_VERSION in error.message
    assert "pip install 'elasticsearch>=8,<9'" in error.message
    assert f"{CLIENT_MAJOR}.x cluster" in error.message


def test_check_version_of_a_newer_major_is_a_mismatch_too() -> None:
    with FaultBulkServer(version=f"{CLIENT_MAJOR + 1}.0.0") as new:
        error = fail(Connection(new.url), "version")
    assert type(error) is VersionMismatch
    assert f"{CLIENT_MAJOR + 1}.0.0" in error.message


def test_check_version_unreachable_is_unavailable() -> None:
    error = fail(Connection(closed_url(), timeout_s=2), "version")
    assert type(error) is RemoteUnavailable
    assert "cannot connect" in error.message


def test_check_version_without_the_product_header_is_refused(server: FaultBulkServer) -> None:
    server.product_header = False
    error = fail(Connection(server.url), "version")
    assert type(error) is RemoteRefused
    assert "not Elasticsearch" in error.message


def test_check_version_of_a_server_going_down_is_unavailable(server: FaultBulkServer) -> None:
    server.down("reset")
    error = fail(Connection(server.url, timeout_s=2), "version")
    assert type(error) is RemoteUnavailable


# -- bulk --------------------------------------------------------------------------------------


def test_bulk_created_then_conflict_items(server: FaultBulkServer) -> None:
    body = body_of("a", "b")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        sink = ElasticsearchSink(Connection(server.url))
        try:
            return await sink.bulk(body), await sink.bulk(body)
        finally:
            await sink.close()

    first, second = run(scenario())
    # filter_path keeps the answers small: only what classification reads.
    assert first == {"errors": False, "items": [{"create": {"status": 201}},
                                                 {"create": {"status": 201}}]}
    assert second["errors"] is True
    assert [next(iter(i.values()))["status"] for i in second["items"]] == [409, 409]
    assert all(next(iter(i.values()))["error"]["type"] == "version_conflict_engine_exception"
               for i in second["items"])
    assert set(next(iter(second["items"][0].values()))) == {"status", "error"}
    outcome = bulk.classify(items("a", "b"), second)
    assert (len(outcome.shipped), outcome.conflicts, outcome.retry, outcome.dead) == (2, 2, [],
                                                                                      [])
    assert sorted(server.snapshot()) == ["a", "b"]
    assert server.requests_log[0][0] in ("POST", "PUT")
    assert server.requests_log[0][2] == 2


def test_bulk_per_item_errors_come_back_in_the_body(server: FaultBulkServer) -> None:
    server.reject_ids({"bad"})
    server.per_item_429({"busy"})
    answer = run(call(Connection(server.url), "bulk", body_of("ok", "bad", "busy")))
    statuses = [next(iter(i.values()))["status"] for i in answer["items"]]
    assert statuses == [201, 400, 429]
    outcome = bulk.classify(items("ok", "bad", "busy"), answer)
    assert [p.event_id for p in outcome.shipped] == ["ok"]
    assert [(d.item.event_id, d.status, d.error_type) for d in outcome.dead] == [
        ("bad", 400, "document_parsing_exception")]
    assert [p.event_id for p in outcome.retry] == ["busy"]


def test_a_refusal_kept_in_the_failure_store_comes_back_as_a_dead_letter(
        server: FaultBulkServer) -> None:
    """With the failure store on, Elasticsearch answers a refused document 201: only the
    `failure_store` field (which the filter path must keep) tells it was not indexed."""
    server.failure_store()
    server.mapping_conflict("latency_ms")
    sent = [Pending(1, "ok", orjson.dumps({"id": "ok", "latency_ms": 1.5}), b"{}"),
            Pending(2, "bad", orjson.dumps({"id": "bad", "latency_ms": "fast"}), b"{}")]
    body = b"".join(bulk.action(item, STREAM) for item in sent)

    async def scenario() -> tuple[dict[str, Any], records.Outcome]:
        sink = ElasticsearchSink(Connection(server.url))
        try:
            return await sink.bulk(body), await sink.send(sent, body)
        finally:
            await sink.close()

    answer, outcome = run(scenario())
    assert [next(iter(i.values())) for i in answer["items"]] == [
        {"status": 201}, {"status": 201, "failure_store": "used"}]
    assert [p.event_id for p in outcome.shipped] == ["ok"]
    assert [(d.item.event_id, d.error_type) for d in outcome.dead] == [
        ("bad", "failure_store_used")]
    assert [doc["document"]["id"] for doc in server.failure_docs] == ["bad", "bad"]
    assert "bad" not in server.snapshot()


# -- a whole-request 400, narrowed over the wire ----------------------------------------------


def send_all(server: FaultBulkServer, sent: list[Pending]) -> records.Outcome:
    async def scenario() -> records.Outcome:
        sink = ElasticsearchSink(Connection(server.url))
        try:
            [(batch, body)] = list(sink.chunks(sent, STREAM, 100, 10**7))
            return await sink.send(batch, body)
        finally:
            await sink.close()

    return run(scenario())


def test_an_id_over_512_bytes_is_narrowed_down_and_the_rest_ships(
        server: FaultBulkServer) -> None:
    """Elasticsearch refuses the whole request for one over-long `_id` (as an older store's
    event may have): the batch is halved until that event stands alone as a dead letter."""
    long_id = "é" * 300
    sent = items(*(f"e{i}" for i in range(5)), long_id, *(f"e{i}" for i in range(5, 10)))
    outcome = send_all(server, sent)
    assert sorted(p.event_id for p in outcome.shipped) == [f"e{i}" for i in range(10)]
    [letter] = outcome.dead
    assert (letter.item.event_id, letter.status, letter.error_type) == (
        long_id, 400, "action_request_validation_exception")
    assert "is too long, must be no longer than 512 bytes but was: 600" in letter.reason
    assert sorted(server.snapshot()) == sorted(f"e{i}" for i in range(10))
    sizes = [n for _m, path, n in server.requests_log if path.endswith("/_bulk")]
    assert sizes[0] == 11 and len(sizes) <= 2 * 4 + 1  # 11 -> 5 + 6 -> ... -> the one alone


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 507])
def test_bulk_whole_retryable_statuses_are_unavailable(server: FaultBulkServer,
                                                       status: int) -> None:
    server.whole_status(status)
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is RemoteUnavailable
    assert error.status == status
    assert f"HTTP {status}" in error.message
    assert server.snapshot() == {}


@pytest.mark.parametrize("status", [401, 403])
def test_bulk_not_authorised_is_refused_and_names_the_setting(server: FaultBulkServer,
                                                              status: int) -> None:
    server.whole_status(status, error_type="security_exception",
                        reason="missing authentication credentials")
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is RemoteRefused
    assert error.status == status
    assert "INGEST_ELASTICSEARCH_API_KEY" in error.message
    assert "security_exception" in error.message


@pytest.mark.parametrize("status", [404, 400, 413, 501])
def test_bulk_other_whole_statuses_are_refused(server: FaultBulkServer, status: int) -> None:
    server.whole_status(status, error_type="index_not_found_exception", reason="no such index")
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is RemoteRefused
    assert error.status == status
    assert error.error_type == "index_not_found_exception"
    assert "index_not_found_exception: no such index" in error.message


@pytest.mark.parametrize(("status", "kind"), [(500, RemoteUnavailable), (501, RemoteRefused),
                                              (404, RemoteRefused), (401, RemoteRefused)])
def test_check_version_answers_follow_the_same_policy(server: FaultBulkServer, status: int,
                                                      kind: type[RemoteError]) -> None:
    original = server._handle

    def failing(method: str, target: str, headers: Any, body: bytes) -> Any:
        if target.split("?")[0] == "/":
            return status, b'{"error": {"type": "x", "reason": "y"}, "status": %d}' % status
        return original(method, target, headers, body)

    server._handle = failing  # type: ignore[method-assign]
    error = fail(Connection(server.url), "version")
    assert type(error) is kind
    assert error.status == status


def test_bulk_timeout_is_unavailable(server: FaultBulkServer) -> None:
    server.delay(1.0)
    error = fail(Connection(server.url, timeout_s=0.2), "bulk", body_of("a"))
    assert type(error) is RemoteUnavailable
    assert "timed out" in error.message
    assert error.status is None


def test_bulk_connection_refused_is_unavailable() -> None:
    error = fail(Connection(closed_url()), "bulk", body_of("a"))
    assert type(error) is RemoteUnavailable
    assert "cannot connect" in error.message


def test_bulk_lost_response_is_unavailable(server: FaultBulkServer) -> None:
    server.lose_responses(1)
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is RemoteUnavailable
    assert sorted(server.snapshot()) == ["a"]  # applied, only the answer was lost


def test_bulk_without_the_product_header_is_refused(server: FaultBulkServer) -> None:
    server.product_header = False
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is RemoteRefused
    assert "not Elasticsearch" in error.message


# -- secrets never in errors -------------------------------------------------------------------

SECRETS = (PASSWORD, API_KEY, "s3cr3t-api-key")


def assert_no_secret(error: BaseException) -> None:
    seen = [str(error), repr(error), *map(str, error.args)]
    if isinstance(error, RemoteError | ConfigError):
        seen.append(error.message)
    for text in seen:
        for secret in SECRETS:
            assert secret not in text, f"secret leaked in {text!r}"


def credentials(url: str, kind: str, timeout_s: float = 2.0) -> Connection:
    if kind == "basic":
        return Connection(url, username="elastic", password=PASSWORD, timeout_s=timeout_s)
    return Connection(url, api_key=API_KEY, timeout_s=timeout_s)


@pytest.mark.parametrize("kind", ["basic", "api_key"])
def test_credentials_never_appear_in_errors(server: FaultBulkServer, kind: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[RemoteError] = []
    for status in (401, 403, 404, 503):
        server.whole_status(status)
        errors.append(fail(credentials(server.url, kind), "bulk", body_of("a")))
    server.whole_status(503, times=0)
    server.delay(1.0)
    errors.append(fail(credentials(server.url, kind, timeout_s=0.2), "bulk", body_of("a")))
    server.delay(0)
    server.product_header = False
    errors.append(fail(credentials(server.url, kind), "version"))
    errors.append(fail(credentials(closed_url(), kind), "bulk", body_of("a")))
    with FaultBulkServer(version="8.15.0") as old:
        errors.append(fail(credentials(old.url, kind), "version"))
    assert [type(e) for e in errors] == [
        RemoteRefused, RemoteRefused, RemoteRefused, RemoteUnavailable, RemoteUnavailable,
        RemoteRefused, RemoteUnavailable, VersionMismatch]
    for error in errors:
        assert_no_secret(error)
    for secret in SECRETS:
        assert secret not in caplog.text


@pytest.mark.parametrize(("kind", "header"), [
    ("basic", "Basic ZWxhc3RpYzpzM2NyM3QtcHc="),  # elastic:s3cr3t-pw
    ("api_key", f"ApiKey {API_KEY}"),
], ids=["basic", "api_key"])
def test_credentials_are_sent_with_every_request(server: FaultBulkServer, kind: str,
                                                 header: str) -> None:
    """The other half of the secret check: the credentials do reach the server, on the
    version check as on bulk (a secured cluster answers 401 to a request without them)."""
    seen: list[tuple[str, str]] = []
    original = server._handle

    def spy(method: str, target: str, headers: Any, body: bytes) -> Any:
        seen.append((target.split("?")[0], headers.get("Authorization", "")))
        return original(method, target, headers, body)

    server._handle = spy  # type: ignore[method-assign]

    async def scenario() -> None:
        sink = ElasticsearchSink(credentials(server.url, kind))
        try:
            await sink.check_version()
            await sink.bulk(body_of("a"))
        finally:
            await sink.close()

    run(scenario())
    assert seen == [("/", header), ("/_bulk", header)]


def test_credentials_in_the_url_never_appear_in_errors() -> None:
    """The client accepts `http://user:password@host:port`; errors must not repeat it."""
    with FaultBulkServer(version="8.15.0") as old:
        url = old.url.replace("http://", f"http://elastic:{PASSWORD}@")
        mismatch = fail(Connection(url), "version")
        old.product_header = False
        not_es = fail(Connection(url), "bulk", body_of("a"))
    assert type(mismatch) is VersionMismatch
    assert type(not_es) is RemoteRefused
    assert_no_secret(mismatch)
    assert_no_secret(not_es)
    assert "http://***@127.0.0.1:" in mismatch.message
