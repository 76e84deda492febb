"""Setup and shipping against a real Elasticsearch (see conftest.py for where it comes from)."""

from __future__ import annotations

import random
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest import records
from ingest.admin.elasticsearch import POLICY
from ingest.admin.elasticsearch import setup as install
from ingest.elastic import CLIENT_MAJOR
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook
from ingest.records import Pending, Row
from ingest.ship.elasticsearch import ElasticsearchSink
from ingest.ship.shipper import Shipper
from ingest.store import PENDING, Budget, Reader, Retention, Store

pytestmark = [pytest.mark.elasticsearch, pytest.mark.usefixtures("assets_restored")]

ENRICH = Enricher.default(PriceBook(lookup=None))
NUMBERS = ("1d", "5gb", "30d")  # the defaults: a cluster that has them installed is unchanged


@pytest.fixture
def stream(cluster: Any) -> Iterator[str]:
    """A data stream name of its own (same dataset, so the same templates), deleted after."""
    name = f"logs-holysheep.requests-t{secrets.token_hex(5)}"
    yield name

    async def delete(sink: ElasticsearchSink) -> None:
        await sink.client.options(ignore_status=404).indices.delete_data_stream(name=name)

    cluster.run(delete)


def rows(n: int, prefix: str = "real") -> list[Row]:
    now_ms = int(time.time() * 1000)
    found = []
    for i in range(n):
        event = {"id": f"{prefix}-{i:05d}", "type": "holysheep_request", "model": "gpt-4o",
                 "status_code": 200, "latency_ms": 10.0 + i, "timestamp": now_ms - i,
                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                 "user_metadata": {"user_id": "user_001", "trace_id": f"trace-{i}"}}
        raw = orjson.dumps(event)
        found.append(ENRICH.row(orjson.loads(raw), raw, now_ms))
    return found


class Local:
    """A store with rows in it and a reader, in a temporary directory."""

    def __init__(self, data: Path) -> None:
        self.store = Store(data, budget=Budget(min_free_bytes=0),
                           retention=Retention(keep_pending=True), housekeeping_s=3600)
        self.store.start()
        self.reader = Reader(data)

    def shipper(self, sink: ElasticsearchSink, stream: str) -> Shipper:
        return Shipper(self.store, self.reader, sink, index=stream, batch_docs=100,
                       backoff_initial=0.05, backoff_max=1.0, idle_poll=0.02,
                       rng=random.Random(3))

    def close(self) -> None:
        self.reader.close()
        self.store.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    found = Local(tmp_path / "data")
    yield found
    found.close()


async def setup(sink: ElasticsearchSink, stream: str) -> list[str]:
    return await install(sink.cluster, stream, *NUMBERS)


async def count(sink: ElasticsearchSink, stream: str) -> int:
    await sink.client.indices.refresh(index=stream)
    found = await sink.client.count(index=stream)
    return int(found["count"])


def test_setup_is_idempotent(cluster: Any, stream: str) -> None:
    async def scenario(sink: ElasticsearchSink) -> tuple[str, list[str], list[str]]:
        version = await sink.check_version()
        return version, await setup(sink, stream), await setup(sink, stream)

    version, first, second = cluster.run(scenario)
    assert int(version.split(".")[0]) == CLIENT_MAJOR
    assert first[-1] == f"created  data stream {stream}"
    assert len(first) == len(second) == 5
    assert all(line.startswith("unchanged  ") for line in second), second
    assert second[-1] == f"unchanged  data stream {stream}"


def test_shipped_events_are_searchable(cluster: Any, stream: str, local: Local) -> None:
    async def scenario(sink: ElasticsearchSink) -> tuple[int, dict[str, Any], Shipper]:
        await setup(sink, stream)
        assert all(await local.store.write(rows(120), (), 0))
        shipper = local.shipper(sink, stream)
        await shipper.drain(timeout=60)
        hits = await sink.client.search(index=stream, query={"term": {"id": "real-00007"}})
        return await count(sink, stream), hits.body, shipper

    total, hits, shipper = cluster.run(scenario)
    assert total == 120
    assert shipper.stats.indexed == 120
    assert local.reader.counts()["shipped"] == 120
    [hit] = hits["hits"]["hits"]
    assert hit["_id"] == "real-00007"
    assert hit["_index"].startswith(f".ds-{stream}-")
    assert orjson.loads(hit["_source"]["event"]["original"])["id"] == "real-00007"


def test_a_resent_batch_makes_no_duplicates(cluster: Any, stream: str,
                                            local: Local) -> None:
    def back_to_pending(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE events SET state = {PENDING}")

    async def scenario(sink: ElasticsearchSink) -> tuple[int, int, Shipper]:
        await setup(sink, stream)
        assert all(await local.store.write(rows(40), (), 0))
        shipper = local.shipper(sink, stream)
        await shipper.drain(timeout=60)
        first = await count(sink, stream)
        await local.store.apply(back_to_pending)
        assert local.reader.counts()["pending"] == 40
        await shipper.drain(timeout=60)
        return first, await count(sink, stream), shipper

    first, second, shipper = cluster.run(scenario)
    assert first == second == 40
    assert shipper.stats.indexed == 40
    assert shipper.stats.conflicts == 40
    assert local.reader.counts()["shipped"] == 40


def test_the_backing_index_has_the_ilm_policy(cluster: Any, stream: str) -> None:
    async def scenario(sink: ElasticsearchSink) -> tuple[dict[str, Any], dict[str, Any],
                                                          dict[str, Any]]:
        await setup(sink, stream)
        found = await sink.client.indices.get_data_stream(name=stream)
        [data_stream] = found["data_streams"]
        backing = data_stream["indices"][0]["index_name"]
        settings = await sink.client.indices.get_settings(index=backing)
        explained = await sink.client.ilm.explain_lifecycle(index=backing)
        return data_stream, settings.body[backing]["settings"], explained.body

    data_stream, settings, explained = cluster.run(scenario)
    assert data_stream["ilm_policy"] == POLICY
    assert data_stream["template"] == "holysheep-requests"
    assert settings["index"]["lifecycle"]["name"] == POLICY
    assert (settings["index"]["number_of_shards"], settings["index"]["number_of_replicas"]) == (
        "1", "0")
    [state] = explained["indices"].values()
    assert state["managed"] is True
    assert state["policy"] == POLICY


def test_the_backing_index_refuses_malformed_values_even_in_logsdb_mode(
        cluster: Any, stream: str) -> None:
    async def scenario(sink: ElasticsearchSink) -> dict[str, Any]:
        await setup(sink, stream)
        found = await sink.client.indices.get_data_stream(name=stream)
        backing = found["data_streams"][0]["indices"][0]["index_name"]
        settings = await sink.client.indices.get_settings(index=backing)
        index: dict[str, Any] = settings.body[backing]["settings"]["index"]
        return index

    index = cluster.run(scenario)
    if cluster.fresh:
        # 9.x puts every new logs-*-* data stream in logsdb mode, whatever template made it.
        assert index["mode"] == "logsdb"
    # logsdb would default this to true; the settings component template says false.
    assert index["mapping"]["ignore_malformed"] == "false"


def test_the_failure_store_is_off(cluster: Any, stream: str) -> None:
    """With it on, a refused document would answer 201 `failure_store: used`, not a 400."""
    async def scenario(sink: ElasticsearchSink) -> dict[str, Any]:
        await setup(sink, stream)
        found = await sink.client.indices.get_data_stream(name=stream)
        data_stream: dict[str, Any] = found["data_streams"][0]
        return data_stream

    assert cluster.run(scenario)["failure_store"]["enabled"] is False


def test_a_mapping_conflict_ends_in_the_dead_letters(cluster: Any, stream: str,
                                                     local: Local) -> None:
    """A malformed number is refused (400), not indexed without the field as logsdb would."""
    good, bad = rows(2, prefix="conflict")
    bad = bad._replace(doc=orjson.dumps({**orjson.loads(bad.doc), "latency_ms": "fast"}))

    async def scenario(sink: ElasticsearchSink) -> int:
        await setup(sink, stream)
        assert all(await local.store.write([good, bad], (), 0))
        await local.shipper(sink, stream).drain(timeout=60)
        return await count(sink, stream)

    assert cluster.run(scenario) == 1
    [letter] = local.reader.dead_letters()
    assert letter["event_id"] == "conflict-00001"
    assert letter["status"] == 400
    assert letter["error_type"] == "document_parsing_exception"
    assert "latency_ms" in letter["reason"]
    assert letter["target"] == stream
    assert local.reader.counts() == {"pending": 0, "shipped": 1, "dead": 1, "quarantined": 0}



def test_a_raw_event_longer_than_the_logsdb_ignore_above_comes_back_whole(
        cluster: Any, stream: str, local: Local) -> None:
    """event.original is neither indexed nor in doc values: ignore_above (8191) never applies."""
    [row] = rows(1, prefix="long")
    event = {**orjson.loads(row.raw), "note": "x" * 20_000}  # an unmapped field: _source only
    raw = orjson.dumps(event)
    row = ENRICH.row(orjson.loads(raw), raw, int(time.time() * 1000))

    async def scenario(sink: ElasticsearchSink) -> dict[str, Any]:
        await setup(sink, stream)
        assert all(await local.store.write([row], (), 0))
        await local.shipper(sink, stream).drain(timeout=60)
        await sink.client.indices.refresh(index=stream)
        found = await sink.client.search(index=stream, query={"term": {"id": "long-00000"}})
        body: dict[str, Any] = found.body
        return body

    [hit] = cluster.run(scenario)["hits"]["hits"]
    assert hit["_source"]["event"]["original"] == raw.decode()
    assert hit["_source"]["note"] == "x" * 20_000
    assert "event.original" not in hit.get("_ignored", [])


def test_an_id_over_512_bytes_never_stalls_shipping(cluster: Any, stream: str,
                                                   local: Local) -> None:
    """Elasticsearch refuses a whole bulk request for one `_id` over 512 bytes of UTF-8: the
    shipper dead-letters such an event (from an older store) unsent, and the sink narrows a
    request holding one down to it."""
    good = rows(6, prefix="len")
    long_id = "é" * 300  # 300 characters, 600 bytes
    event = {"id": long_id, "status_code": 200, "timestamp": int(time.time() * 1000)}
    raw = orjson.dumps(event)
    too_long = ENRICH.row(orjson.loads(raw), raw, event["timestamp"])

    async def scenario(sink: ElasticsearchSink) -> tuple[int, records.Outcome, int]:
        await setup(sink, stream)
        assert all(await local.store.write([*good[:3], too_long, *good[3:]], (), 0))
        await local.shipper(sink, stream).drain(timeout=60)
        shipped = await count(sink, stream)
        # The same event straight to the sink, past the shipper's check, between two others.
        sent = [Pending(1, "narrow-a", good[0].doc.replace(b"len-00000", b"narrow-a"), b"{}"),
                Pending(2, long_id, too_long.doc, raw),
                Pending(3, "narrow-b", good[1].doc.replace(b"len-00001", b"narrow-b"), b"{}")]
        [(batch, body)] = list(sink.chunks(sent, stream, 10, 10**7))
        outcome = await sink.send(batch, body)
        return shipped, outcome, await count(sink, stream)

    shipped, outcome, after = cluster.run(scenario)
    assert shipped == 6
    [letter] = local.reader.dead_letters()
    assert (letter["event_id"], letter["error_type"]) == (long_id, "id_too_long")
    assert sorted(p.event_id for p in outcome.shipped) == ["narrow-a", "narrow-b"]
    [refused] = outcome.dead
    assert refused.item.event_id == long_id
    assert refused.error_type == "action_request_validation_exception"
    assert "must be no longer than 512 bytes but was: 600" in refused.reason
    assert after == 8


def test_reports_and_search_agree_with_the_store(cluster: Any, stream: str,
                                                 local: Local) -> None:
    """Same questions, both backends: exact from the store, t-digest from Elasticsearch."""
    from ingest.answers import elasticsearch as es_answers
    from ingest.answers import reports

    now_ms = int(time.time() * 1000)
    window = records.Query(now_ms - 3_600_000, now_ms + 60_000)

    async def scenario(sink: ElasticsearchSink) -> dict[str, Any]:
        await setup(sink, stream)
        assert all(await local.store.write(rows(200, "rep"), (), 0))
        await local.shipper(sink, stream).drain(timeout=60)
        await sink.client.indices.refresh(index=stream)
        found = {q: es_answers.from_es(q, window, await sink.cluster.search(
            stream, es_answers.es_body(q, window))) for q in ("latency", "errors", "cost")}
        hits = await sink.cluster.search(stream, es_answers.search_body(None, "user_001", "trace-7",
                                                             None, 5))
        found["search"] = [h["_source"]["id"] for h in hits["hits"]["hits"]]
        return found

    es = cluster.run(scenario)
    reader = local.reader
    store_latency = reports.latency_result(window, reader.latencies(window), "exact")
    assert es["latency"]["overall"]["count"] == store_latency["overall"]["count"] == 200
    for p in ("p50", "p90", "p95", "p99"):
        # latencies 10..209 ms: t-digest on 200 values is within 1 % of the exact answer
        assert es["latency"]["overall"][p] == pytest.approx(
            store_latency["overall"][p], rel=0.01), p
    store_errors = reports.errors_result(window, reader.error_counts(window),
                                         reader.top_errors(window, 3))
    assert es["errors"]["total"] == store_errors["total"]
    store_cost = reports.cost_result(window, "day", reader.cost(window, "day"))
    assert [r["requests"] for r in es["cost"]["rows"]] == [
        r["requests"] for r in store_cost["rows"]]
    assert es["cost"]["total"]["total_tokens"] == store_cost["total"]["total_tokens"] == 3000
    assert es["search"] == ["rep-00007"]


def test_a_copy_resent_after_a_rollover_is_counted_once(cluster: Any, stream: str,
                                                        local: Local) -> None:
    """`create` with `_id` conflicts only within the write index: an event re-sent after a
    rollover becomes a second document. Search and every report still count it once."""
    from ingest.answers import elasticsearch as es_answers
    from ingest.answers import reports

    now_ms = int(time.time() * 1000)
    window = records.Query(now_ms - 3_600_000, now_ms + 60_000)
    dup_id, other_id = f"dup-{secrets.token_hex(4)}", f"other-{secrets.token_hex(4)}"
    events = [
        {"id": dup_id, "model": "gpt-4o", "status_code": 502, "latency_ms": 120.0,
         "timestamp": now_ms - 10, "error": {"message": "bad gateway from upstream"},
         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
         "user_metadata": {"user_id": "user_dup"}},
        {"id": other_id, "model": "gpt-4o", "status_code": 200, "latency_ms": 40.0,
         "timestamp": now_ms - 20,
         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
         "user_metadata": {"user_id": "user_dup"}},
    ]
    found_rows = []
    for event in events:
        raw = orjson.dumps(event)
        found_rows.append(ENRICH.row(orjson.loads(raw), raw, now_ms))

    def resend_dup(conn: sqlite3.Connection) -> None:
        conn.execute(f"UPDATE events SET state = {PENDING} WHERE event_id = ?", (dup_id,))

    async def scenario(sink: ElasticsearchSink) -> dict[str, Any]:
        await setup(sink, stream)
        assert all(await local.store.write(found_rows, (), 0))
        shipper = local.shipper(sink, stream)
        await shipper.drain(timeout=60)
        await sink.client.indices.rollover(alias=stream)
        await local.store.apply(resend_dup)
        await shipper.drain(timeout=60)
        await sink.client.indices.refresh(index=stream)
        copies = await sink.client.search(index=stream, query={"term": {"id": dup_id}})
        found: dict[str, Any] = {
            "documents": await count(sink, stream), "stats": shipper.stats,
            "copies": sorted(h["_index"] for h in copies["hits"]["hits"])}
        for question in ("latency", "errors", "cost"):
            found[question] = es_answers.from_es(question, window, await sink.cluster.search(
                stream, es_answers.es_body(question, window)))
        found["cost_by_user"] = es_answers.from_es("cost", window, await sink.cluster.search(
            stream, es_answers.es_body("cost", window, "user")), "user")
        search_body = es_answers.search_body
        for name, body in (("by_id", search_body(dup_id, None, None, None, 10)),
                           ("by_user", search_body(None, "user_dup", None, None, 10)),
                           ("by_text", search_body(None, None, None, "bad gateway", 10))):
            answer = await sink.cluster.search(stream, body)
            found[name] = ([h["_source"]["id"] for h in answer["hits"]["hits"]],
                           [d["id"] for d in es_answers.search_hits(answer)])
        return found

    es = cluster.run(scenario)
    # What Elasticsearch does: the re-sent event is a second document, in the new write index.
    assert es["documents"] == 3
    assert es["stats"].indexed == 3 and es["stats"].conflicts == 0
    assert len(es["copies"]) == 2 and es["copies"][0] != es["copies"][1]
    # Search: one hit per event id (collapse), also before our own pass over the hits.
    assert es["by_id"] == ([dup_id], [dup_id])
    assert sorted(es["by_user"][0]) == sorted(es["by_user"][1]) == sorted([dup_id, other_id])
    assert es["by_text"] == ([dup_id], [dup_id])
    # Every count is of events, as the store counts them.
    reader = local.reader
    store_latency = reports.latency_result(window, reader.latencies(window), "exact")
    assert es["latency"]["overall"]["count"] == store_latency["overall"]["count"] == 2
    assert [m["count"] for m in es["latency"]["by_model"]] == [2]
    assert es["latency"]["buckets"] == store_latency["buckets"] == {
        "ultra-fast": 1, "fast": 0, "normal": 1, "slow": 0}
    store_errors = reports.errors_result(window, reader.error_counts(window),
                                         reader.top_errors(window, 3))
    assert es["errors"]["total"] == store_errors["total"] == {
        "requests": 2, "errors": 1, "error_rate": 0.5}
    assert es["errors"]["by_model"][0]["top_errors"] == [
        {"message": "bad gateway from upstream", "count": 1}]
    assert [r["requests"] for r in es["cost"]["rows"]] == [2]
    assert [(r["user"], r["requests"]) for r in es["cost_by_user"]["rows"]] == [("user_dup", 2)]
    # Sums are over documents (README): the second copy's tokens are in them.
    assert es["cost"]["total"]["total_tokens"] == 45
