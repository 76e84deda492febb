"""ElasticsearchSink over the official client, against the fault-injection `_bulk` server.

FaultBulkServer is a test tool, not an Elasticsearch: these tests pin down how the sink maps the
client's answers and errors onto SinkUnavailable / SinkRefused / SinkVersionMismatch, and what
`assets()` installs. The real-cluster suite is tests/elasticsearch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from faults import FaultBulkServer
from receiver import free_port

from ingest import records
from ingest.admin.elasticsearch import (
    MANAGED_BY,
    MAPPINGS,
    POLICY,
    SETTINGS,
    TEMPLATE,
    assets,
    template_pattern,
)
from ingest.elastic import CLIENT_MAJOR, CLIENT_VERSION, Connection
from ingest.errors import ConfigError, SinkError, SinkRefused, SinkUnavailable, SinkVersionMismatch
from ingest.records import Pending
from ingest.ship import bulk
from ingest.ship.elasticsearch import ElasticsearchSink

T = TypeVar("T")
STREAM = "logs-holysheep.requests-default"
PASSWORD = "s3cr3t-pw"
API_KEY = "QXBpS2V5SWQ6czNjcjN0LWFwaS1rZXk="  # base64 of "ApiKeyId:s3cr3t-api-key"


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def server() -> Iterator[FaultBulkServer]:
    with FaultBulkServer() as srv:
        yield srv


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


def fail(conn: Connection, what: str, body: bytes = b"") -> SinkError:
    """The SinkError a call raises (the test fails if it raises nothing or something else)."""
    async def scenario() -> SinkError:
        with pytest.raises(SinkError) as caught:
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
    assert type(error) is SinkVersionMismatch
    assert "8.15.0" in error.message
    assert CLIENT_VERSION in error.message
    assert "pip install 'elasticsearch>=8,<9'" in error.message
    assert f"{CLIENT_MAJOR}.x cluster" in error.message


def test_check_version_of_a_newer_major_is_a_mismatch_too() -> None:
    with FaultBulkServer(version=f"{CLIENT_MAJOR + 1}.0.0") as new:
        error = fail(Connection(new.url), "version")
    assert type(error) is SinkVersionMismatch
    assert f"{CLIENT_MAJOR + 1}.0.0" in error.message


def test_check_version_unreachable_is_unavailable() -> None:
    error = fail(Connection(closed_url(), timeout_s=2), "version")
    assert type(error) is SinkUnavailable
    assert "cannot connect" in error.message


def test_check_version_without_the_product_header_is_refused(server: FaultBulkServer) -> None:
    server.product_header = False
    error = fail(Connection(server.url), "version")
    assert type(error) is SinkRefused
    assert "not Elasticsearch" in error.message


def test_check_version_of_a_server_going_down_is_unavailable(server: FaultBulkServer) -> None:
    server.down("reset")
    error = fail(Connection(server.url, timeout_s=2), "version")
    assert type(error) is SinkUnavailable


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


def test_send_classifies_the_answer_item_by_item(server: FaultBulkServer) -> None:
    server.reject_ids({"bad"})
    server.per_item_429({"busy"})
    sent = items("ok", "bad", "busy", "again")

    async def scenario() -> records.Outcome:
        sink = ElasticsearchSink(Connection(server.url))
        try:
            await sink.bulk(body_of("again"))
            [(batch, body)] = list(sink.chunks(sent, STREAM, 10, 1_000_000))
            assert batch == sent
            return await sink.send(batch, body)
        finally:
            await sink.close()

    outcome = run(scenario())
    assert [p.event_id for p in outcome.shipped] == ["ok", "again"]
    assert outcome.conflicts == 1
    assert [(p.event_id, p.attempts) for p in outcome.retry] == [("busy", 1)]
    assert [(d.item.event_id, d.status) for d in outcome.dead] == [("bad", 400)]
    assert outcome.blocked is None


# -- a whole-request 400 ----------------------------------------------------------------------


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


def test_two_refused_events_in_both_halves_are_both_narrowed_down(
        server: FaultBulkServer) -> None:
    server.refuse_requests_with(["b", "g"])
    outcome = send_all(server, items(*"abcdefgh"))
    assert sorted(p.event_id for p in outcome.shipped) == list("acdefh")
    assert sorted(d.item.event_id for d in outcome.dead) == ["b", "g"]


def test_an_event_refused_with_another_400_is_dead_once_its_half_is_accepted(
        server: FaultBulkServer) -> None:
    server.refuse_requests_with(["c"], error_type="illegal_argument_exception",
                                reason="something about c")
    outcome = send_all(server, items(*"abcdef"))
    assert sorted(p.event_id for p in outcome.shipped) == list("abdef")
    [letter] = outcome.dead
    assert (letter.item.event_id, letter.error_type) == ("c", "illegal_argument_exception")
    assert "something about c" in letter.reason


@pytest.mark.parametrize("count", [1, 6])
def test_a_400_for_every_part_is_the_requests_fault_and_dead_letters_nothing(
        server: FaultBulkServer, count: int) -> None:
    server.whole_status(400, times=None, error_type="illegal_argument_exception",
                        reason="request [/_bulk] contains unrecognized parameter")

    async def scenario() -> SinkError:
        sink = ElasticsearchSink(Connection(server.url))
        try:
            [(batch, body)] = list(sink.chunks(items(*"abcdef"[:count]), STREAM, 100, 10**7))
            with pytest.raises(SinkRefused) as caught:
                await sink.send(batch, body)
            return caught.value
        finally:
            await sink.close()

    error = run(scenario())
    assert error.status == 400 and "unrecognized parameter" in error.message
    assert server.bulk_requests == (1 if count == 1 else 3)  # the batch, then its two halves


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 507])
def test_bulk_whole_retryable_statuses_are_unavailable(server: FaultBulkServer,
                                                       status: int) -> None:
    server.whole_status(status)
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is SinkUnavailable
    assert error.status == status
    assert f"HTTP {status}" in error.message
    assert server.snapshot() == {}


@pytest.mark.parametrize("status", [401, 403])
def test_bulk_not_authorised_is_refused_and_names_the_setting(server: FaultBulkServer,
                                                              status: int) -> None:
    server.whole_status(status, error_type="security_exception",
                        reason="missing authentication credentials")
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is SinkRefused
    assert error.status == status
    assert "INGEST_ELASTICSEARCH_API_KEY" in error.message
    assert "security_exception" in error.message


@pytest.mark.parametrize("status", [404, 400, 413, 501])
def test_bulk_other_whole_statuses_are_refused(server: FaultBulkServer, status: int) -> None:
    server.whole_status(status, error_type="index_not_found_exception", reason="no such index")
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is SinkRefused
    assert error.status == status
    assert error.error_type == "index_not_found_exception"
    assert "index_not_found_exception: no such index" in error.message


@pytest.mark.parametrize(("status", "kind"), [(500, SinkUnavailable), (501, SinkRefused),
                                              (404, SinkRefused), (401, SinkRefused)])
def test_check_version_answers_follow_the_same_policy(server: FaultBulkServer, status: int,
                                                      kind: type[SinkError]) -> None:
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
    assert type(error) is SinkUnavailable
    assert "timed out" in error.message
    assert error.status is None


def test_bulk_connection_refused_is_unavailable() -> None:
    error = fail(Connection(closed_url()), "bulk", body_of("a"))
    assert type(error) is SinkUnavailable
    assert "cannot connect" in error.message


def test_bulk_lost_response_is_unavailable(server: FaultBulkServer) -> None:
    server.lose_responses(1)
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is SinkUnavailable
    assert sorted(server.snapshot()) == ["a"]  # applied, only the answer was lost


def test_bulk_without_the_product_header_is_refused(server: FaultBulkServer) -> None:
    server.product_header = False
    error = fail(Connection(server.url), "bulk", body_of("a"))
    assert type(error) is SinkRefused
    assert "not Elasticsearch" in error.message


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["not a url", "127.0.0.1:9200", ""])
def test_an_unusable_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ElasticsearchSink(Connection(url))
    assert "INGEST_ELASTICSEARCH_URL" in caught.value.message


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.crt"
    with pytest.raises(ConfigError) as caught:
        ElasticsearchSink(Connection("https://127.0.0.1:9200", ca_cert=missing))
    assert "INGEST_ELASTICSEARCH_CA_CERT" in caught.value.message
    assert str(missing) in caught.value.message


def test_a_directory_as_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ElasticsearchSink(Connection("https://127.0.0.1:9200", ca_cert=tmp_path))


# -- secrets never in errors -------------------------------------------------------------------

SECRETS = (PASSWORD, API_KEY, "s3cr3t-api-key")


def assert_no_secret(error: BaseException) -> None:
    seen = [str(error), repr(error), *map(str, error.args)]
    if isinstance(error, SinkError | ConfigError):
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
    errors: list[SinkError] = []
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
    assert [type(e) for e in errors] == [SinkRefused, SinkRefused, SinkRefused, SinkUnavailable,
                                         SinkUnavailable, SinkRefused, SinkUnavailable,
                                         SinkVersionMismatch]
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
    assert type(mismatch) is SinkVersionMismatch
    assert type(not_es) is SinkRefused
    assert_no_secret(mismatch)
    assert_no_secret(not_es)
    assert "http://***@127.0.0.1:" in mismatch.message


@pytest.mark.parametrize("url", [f"http://elastic:{PASSWORD}@127.0.0.1:notaport",
                                 f"elastic:{PASSWORD}@127.0.0.1"],
                         ids=["bad-port", "no-scheme"])
def test_a_bad_url_with_credentials_is_a_config_error_without_them(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ElasticsearchSink(Connection(url))
    assert "INGEST_ELASTICSEARCH_URL" in caught.value.message
    assert_no_secret(caught.value)


# -- assets ------------------------------------------------------------------------------------


def test_assets_substitute_the_configured_numbers() -> None:
    bodies = assets(STREAM, "2d", "10gb", "90d")
    phases = bodies["policy"]["phases"]
    assert phases["hot"]["actions"]["rollover"] == {"max_age": "2d",
                                                    "max_primary_shard_size": "10gb"}
    assert phases["delete"]["min_age"] == "90d"
    assert phases["delete"]["actions"] == {"delete": {}}
    assert set(bodies) == {"policy", MAPPINGS, SETTINGS, TEMPLATE}


def test_assets_defaults_match_the_spec() -> None:
    bodies = assets(STREAM, "1d", "5gb", "30d")
    phases = bodies["policy"]["phases"]
    assert phases["hot"]["actions"]["rollover"] == {"max_age": "1d",
                                                    "max_primary_shard_size": "5gb"}
    assert phases["delete"]["min_age"] == "30d"
    index = bodies[SETTINGS]["template"]["settings"]["index"]
    assert index["lifecycle"] == {"name": POLICY}
    assert (index["number_of_shards"], index["number_of_replicas"]) == (1, 0)
    template = bodies[TEMPLATE]
    assert template["data_stream"] == {}
    assert template["composed_of"] == [MAPPINGS, SETTINGS]
    properties = bodies[MAPPINGS]["template"]["mappings"]["properties"]
    assert properties["id"]["type"] == "keyword"
    assert properties["latency_ms"]["type"] == "float"
    assert properties["event"]["properties"]["original"]["index"] is False


@pytest.mark.parametrize(("stream", "pattern"), [
    ("logs-holysheep.requests-default", "logs-holysheep.requests-*"),
    ("logs-holysheep.requests-prod", "logs-holysheep.requests-*"),
    ("metrics-foo-bar", "metrics-foo-*"),
    ("my-stream", "my-stream"),
    ("logs-a-b-c", "logs-a-b-c"),
])
def test_index_patterns_follow_the_data_stream(stream: str, pattern: str) -> None:
    assert template_pattern(stream) == pattern
    assert assets(stream, "1d", "5gb", "30d")[TEMPLATE]["index_patterns"] == [pattern]


def meta_of(bodies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: body["_meta"] for name, body in bodies.items()}


def test_every_asset_is_marked_and_hashed() -> None:
    for name, meta in meta_of(assets(STREAM, "1d", "5gb", "30d")).items():
        assert meta["managed_by"] == MANAGED_BY, name
        assert len(meta["content_hash"]) == 16, name
        int(meta["content_hash"], 16)
        assert meta.get("description"), name  # the files' own _meta is kept


def hashes(*args: str) -> dict[str, str]:
    return {name: meta["content_hash"] for name, meta in meta_of(assets(*args)).items()}


def test_content_hash_is_stable() -> None:
    assert hashes(STREAM, "1d", "5gb", "30d") == hashes(STREAM, "1d", "5gb", "30d")
    # Another namespace of the same dataset installs the very same assets.
    assert hashes(STREAM, "1d", "5gb", "30d") == hashes("logs-holysheep.requests-other", "1d",
                                                        "5gb", "30d")


@pytest.mark.parametrize("args", [("2d", "5gb", "30d"), ("1d", "50gb", "30d"),
                                  ("1d", "5gb", "7d")])
def test_content_hash_changes_with_a_number(args: tuple[str, str, str]) -> None:
    before = hashes(STREAM, "1d", "5gb", "30d")
    after = hashes(STREAM, *args)
    assert after["policy"] != before["policy"]
    assert {k: v for k, v in after.items() if k != "policy"} == {
        k: v for k, v in before.items() if k != "policy"}


def test_content_hash_changes_with_the_pattern_only_for_the_template() -> None:
    before = hashes(STREAM, "1d", "5gb", "30d")
    after = hashes("my-stream", "1d", "5gb", "30d")
    assert after[TEMPLATE] != before[TEMPLATE]
    assert {k: v for k, v in after.items() if k != TEMPLATE} == {
        k: v for k, v in before.items() if k != TEMPLATE}
