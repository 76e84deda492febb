"""ElasticsearchSink on an in-memory cluster (FakeCluster): how a bulk answer is classified item
by item, how a batch refused as a whole is narrowed down, the failure store, construction, and
what `assets()` installs. The client's errors over HTTP: tests/integration/test_elastic_http.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.admin.elasticsearch import (
    MANAGED_BY,
    MAPPINGS,
    POLICY,
    SETTINGS,
    TEMPLATE,
    assets,
    template_pattern,
)
from ingest.elastic import Connection
from ingest.errors import ConfigError, RemoteRefused, RemoteUnavailable
from ingest.records import Outcome, Pending
from ingest.ship import bulk
from ingest.ship.elasticsearch import VALIDATION, ElasticsearchSink
from ingest.testing import FakeCluster
from ingest.testing import run_bounded as run

STREAM = "logs-holysheep.requests-default"
PASSWORD = "s3cr3t-pw"
Answer = Callable[[bytes, str], dict[str, Any]]



def items(*event_ids: str) -> list[Pending]:
    return [Pending(n, event_id, orjson.dumps({"id": event_id, "@timestamp": "2025-01-01"}),
                    b'{"raw":true}') for n, event_id in enumerate(event_ids, 1)]


def sent_ids(body: bytes) -> list[str]:
    return [orjson.loads(line)["create"]["_id"] for line in body.splitlines()[::2]]


def created(body: bytes) -> dict[str, Any]:
    return {"errors": False, "items": [{"create": {"status": 201}} for _ in sent_ids(body)]}


def refusing(bad: set[str], error_type: str = "illegal_argument_exception",
             reason: str = "bad event") -> Answer:
    """A cluster refusing as a whole (400) every request that holds one of `bad`."""
    def answer(body: bytes, filter_path: str) -> dict[str, Any]:
        if bad.intersection(sent_ids(body)):
            raise RemoteRefused(f"bulk request: HTTP 400 {error_type}: {reason}", 400,
                              error_type=error_type)
        return created(body)

    return answer


def validating(body: bytes, filter_path: str) -> dict[str, Any]:
    """BulkRequest.validate: one `_id` over 512 bytes fails the whole request."""
    too_long = [(i, len(i.encode())) for i in sent_ids(body) if len(i.encode()) > 512]
    if too_long:
        listed = "".join(f"{n}: id [{i}] is too long, must be no longer than 512 bytes but "
                         f"was: {size};" for n, (i, size) in enumerate(too_long, 1))
        raise RemoteRefused(f"bulk request: HTTP 400 {VALIDATION}: Validation Failed: {listed}",
                          400, error_type=VALIDATION)
    return created(body)


def send(cluster: FakeCluster, sent: list[Pending]) -> Outcome:
    """One batch of everything `sent`, through the sink's own chunking."""
    async def scenario() -> Outcome:
        async with ElasticsearchSink(cluster) as sink:
            [(batch, body)] = list(sink.chunks(sent, STREAM, 100, 10**7))
            assert batch == sent
            return await sink.send(batch, body)

    return run(scenario())


def sizes(cluster: FakeCluster) -> list[int]:
    return [len(sent_ids(body)) for body, _filter in cluster.bulks]


# -- classification ----------------------------------------------------------------------------


def test_send_classifies_the_answer_item_by_item() -> None:
    def answer(body: bytes, filter_path: str) -> dict[str, Any]:
        return {"errors": True, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 400, "error": {"type": "document_parsing_exception",
                                                 "reason": "failed to parse"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception",
                                                 "reason": "busy"}}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception",
                                                 "reason": "exists"}}}]}

    cluster = FakeCluster(answer)
    outcome = send(cluster, items("ok", "bad", "busy", "again"))
    assert [p.event_id for p in outcome.shipped] == ["ok", "again"]
    assert outcome.conflicts == 1
    assert [(p.event_id, p.attempts) for p in outcome.retry] == [("busy", 1)]
    assert [(d.item.event_id, d.status, d.error_type, d.reason) for d in outcome.dead] == [
        ("bad", 400, "document_parsing_exception", "failed to parse")]
    assert outcome.blocked is None
    # One request, the body as chunked, and the filter path that keeps answers small.
    [(body, filter_path)] = cluster.bulks
    assert body == b"".join(bulk.action(p, STREAM) for p in items("ok", "bad", "busy", "again"))
    assert filter_path == bulk.FILTER_PATH
    assert cluster.closed


def test_a_refusal_kept_in_the_failure_store_comes_back_as_a_dead_letter() -> None:
    """With the failure store on, Elasticsearch answers a refused document 201: only the
    `failure_store` field (which the filter path must keep) tells it was not indexed."""
    def answer(body: bytes, filter_path: str) -> dict[str, Any]:
        assert "items.*.failure_store" in filter_path.split(",")
        return {"errors": False, "items": [{"create": {"status": 201}}, {"create": {
            "status": 201, "failure_store": "used"}}]}

    outcome = send(FakeCluster(answer), items("ok", "bad"))
    assert [p.event_id for p in outcome.shipped] == ["ok"]
    assert [(d.item.event_id, d.status, d.error_type) for d in outcome.dead] == [
        ("bad", 201, "failure_store_used")]
    assert "failure store" in outcome.dead[0].reason


def test_an_answer_that_does_not_pair_with_the_batch_retries_all_of_it() -> None:
    outcome = send(FakeCluster(lambda body, fp: {"errors": False, "items": []}), items("a", "b"))
    assert [(p.event_id, p.attempts) for p in outcome.retry] == [("a", 1), ("b", 1)]
    assert outcome.shipped == [] and outcome.dead == []


@pytest.mark.parametrize("error", [RemoteUnavailable("bulk request: HTTP 503", 503),
                                   RemoteRefused("bulk request: HTTP 401", 401),
                                   RemoteRefused("bulk request: HTTP 413", 413)],
                         ids=["503", "401", "413"])
def test_a_whole_request_failure_other_than_400_is_raised_as_it_is(error: Exception) -> None:
    def answer(body: bytes, filter_path: str) -> dict[str, Any]:
        raise error

    cluster = FakeCluster(answer)
    with pytest.raises(type(error)) as caught:
        send(cluster, items(*"abcd"))
    assert caught.value is error
    assert len(cluster.bulks) == 1  # not narrowed: the shipper retries or pauses


# -- a whole-request 400 ----------------------------------------------------------------------


def test_an_id_over_512_bytes_is_narrowed_down_and_the_rest_ships() -> None:
    """Elasticsearch refuses the whole request for one over-long `_id` (as an older store's
    event may have): the batch is halved until that event stands alone as a dead letter."""
    long_id = "é" * 300
    cluster = FakeCluster(validating)
    sent = items(*(f"e{i}" for i in range(5)), long_id, *(f"e{i}" for i in range(5, 10)))
    outcome = send(cluster, sent)
    assert sorted(p.event_id for p in outcome.shipped) == [f"e{i}" for i in range(10)]
    [letter] = outcome.dead
    assert (letter.item.event_id, letter.status, letter.error_type) == (
        long_id, 400, VALIDATION)
    assert "is too long, must be no longer than 512 bytes but was: 600" in letter.reason
    # 11 refused -> 5 | 6 refused -> 3 refused | 3 -> 1 refused (alone: dead) | 2
    assert sizes(cluster) == [11, 5, 6, 3, 3, 1, 2]


def test_two_refused_events_in_both_halves_are_both_narrowed_down() -> None:
    cluster = FakeCluster(refusing({"b", "g"}, VALIDATION, "Validation Failed"))
    outcome = send(cluster, items(*"abcdefgh"))
    assert sorted(p.event_id for p in outcome.shipped) == list("acdefh")
    assert sorted(d.item.event_id for d in outcome.dead) == ["b", "g"]
    assert all(d.error_type == VALIDATION for d in outcome.dead)


def test_two_events_refused_alike_in_both_halves_are_the_requests_fault() -> None:
    """Not a validation error and both halves refused: that looks like the request, not an
    event, so nothing is dead-lettered and the refusal goes up (shipping pauses)."""
    cluster = FakeCluster(refusing({"b", "g"}))
    with pytest.raises(RemoteRefused) as caught:
        send(cluster, items(*"abcdefgh"))
    assert caught.value.status == 400
    assert sizes(cluster) == [8, 4, 4]


def test_an_event_refused_with_another_400_is_dead_once_its_half_is_accepted() -> None:
    cluster = FakeCluster(refusing({"c"}, reason="something about c"))
    outcome = send(cluster, items(*"abcdef"))
    assert sorted(p.event_id for p in outcome.shipped) == list("abdef")
    [letter] = outcome.dead
    assert (letter.item.event_id, letter.status, letter.error_type) == (
        "c", 400, "illegal_argument_exception")
    assert "something about c" in letter.reason


@pytest.mark.parametrize("count", [1, 6])
def test_a_400_for_every_part_is_the_requests_fault_and_dead_letters_nothing(
        count: int) -> None:
    refusal = RemoteRefused("bulk request: HTTP 400 illegal_argument_exception: request "
                          "[/_bulk] contains unrecognized parameter", 400,
                          error_type="illegal_argument_exception")

    def answer(body: bytes, filter_path: str) -> dict[str, Any]:
        raise refusal

    cluster = FakeCluster(answer)
    with pytest.raises(RemoteRefused) as caught:
        send(cluster, items(*"abcdef"[:count]))
    assert caught.value is refusal
    assert len(cluster.bulks) == (1 if count == 1 else 3)  # the batch, then its two halves


def test_a_400_for_a_body_not_made_of_item_pairs_is_not_narrowed() -> None:
    def answer(body: bytes, filter_path: str) -> dict[str, Any]:
        raise RemoteRefused("bulk request: HTTP 400", 400)

    async def scenario() -> None:
        async with ElasticsearchSink(FakeCluster(answer)) as sink:
            await sink.send(items("a", "b"), b'{"create":{}}\n')

    with pytest.raises(RemoteRefused):
        run(scenario())


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


def test_a_bad_url_with_credentials_is_a_config_error_without_them_in_it() -> None:
    for url in (f"http://elastic:{PASSWORD}@127.0.0.1:notaport", f"elastic:{PASSWORD}@127.0.0.1"):
        with pytest.raises(ConfigError) as caught:
            ElasticsearchSink(Connection(url))
        assert "INGEST_ELASTICSEARCH_URL" in caught.value.message
        assert PASSWORD not in caught.value.message
        assert all(PASSWORD not in str(arg) for arg in caught.value.args)


def test_the_sink_reports_the_clusters_version_and_redacted_url() -> None:
    cluster = FakeCluster(version="9.1.3", url="http://***@cluster.invalid:9200")
    sink = ElasticsearchSink(cluster)
    assert sink.url == "http://***@cluster.invalid:9200"
    assert run(sink.check_version()) == "9.1.3"


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
