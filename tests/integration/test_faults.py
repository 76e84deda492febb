"""The fault-injection `_bulk` server, driven by the real official client and by plain httpx."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    BadRequestError,
    ConnectionError,
    ConnectionTimeout,
    TransportError,
    UnsupportedProductError,
)
from faults import BulkItem, FaultBulkServer

from ingest.ship.bulk import FILTER_PATH as SINK_FILTER
from ingest.testing import run_bounded as run

pytestmark = pytest.mark.integration

STREAM = "logs-holysheep.requests-default"
WRITE_BLOCK = f"index [{STREAM}] blocked by: [FORBIDDEN/8/index write (api)];"
FLOOD_BLOCK = (f"index [{STREAM}] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded "
               "flood-stage watermark, index has read-only-allow-delete block];")



@asynccontextmanager
async def client(srv: FaultBulkServer, **options: Any) -> AsyncIterator[AsyncElasticsearch]:
    settings: dict[str, Any] = {"max_retries": 0, "request_timeout": 5.0,
                                "retry_on_timeout": False, **options}
    es = AsyncElasticsearch(srv.url, node_class="httpxasync", **settings)  # type: ignore[arg-type]
    try:
        yield es
    finally:
        await es.close()


def doc(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"@timestamp": "2025-01-01T00:00:00Z", "event_id": event_id, "latency_ms": 12.5,
            **fields}


def ndjson(ids: Iterable[str], action: str = "create", index: str | None = None,
           **fields: Any) -> bytes:
    lines = []
    for event_id in ids:
        meta: dict[str, Any] = {"_id": event_id}
        if index:
            meta["_index"] = index
        lines.append(json.dumps({action: meta}))
        if action != "delete":
            lines.append(json.dumps(doc(event_id, **fields)))
    return ("\n".join(lines) + "\n").encode()


async def bulk(es: AsyncElasticsearch, body: bytes, **params: Any) -> dict[str, Any]:
    response = await es.bulk(body=body, index=STREAM, **params)  # type: ignore[arg-type]
    return dict(response.body)


def statuses(response: dict[str, Any]) -> dict[str, int]:
    return {item["create"]["_id"]: item["create"]["status"] for item in response["items"]}


# -- info, headers, routing -------------------------------------------------------------------


def test_info_with_the_official_client(server: FaultBulkServer) -> None:
    async def scenario() -> None:
        async with client(server) as es:
            info = await es.info()
            assert info["name"] == "fault-injection"
            assert info["cluster_name"] == "fault-injection"
            assert info["version"]["number"] == "9.1.0"
            assert info["version"]["build_flavor"] == "default"
            assert info["tagline"] == "You Know, for Search"
            assert await es.ping() is True

    run(scenario())
    assert server.requests_log == [("GET", "/", 0), ("HEAD", "/", 0)]


def test_every_response_has_the_product_header(server: FaultBulkServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        answers = [http.get("/"), http.get("/_cluster/health"), http.get("/_bulk"),
                   http.post("/_bulk", content=b"not json\n")]
    assert [r.status_code for r in answers] == [200, 400, 405, 400]
    for answer in answers:
        assert answer.headers["X-Elastic-Product"] == "Elasticsearch"
        assert answer.headers["Content-Type"] == "application/json"
    assert answers[0].json()["version"] == {
        "number": "9.1.0", "build_flavor": "default", "build_type": "fault-injection",
        "build_snapshot": False}
    assert answers[3].json()["error"]["type"] == "x_content_parse_exception"


def test_client_refuses_a_server_without_the_product_header(server: FaultBulkServer) -> None:
    server.product_header = False

    async def scenario() -> None:
        async with client(server) as es:
            with pytest.raises(UnsupportedProductError):
                await es.info()

    run(scenario())


def test_major_mismatch_answers_like_an_older_cluster(server: FaultBulkServer) -> None:
    server.version = "8.15.0"

    async def scenario() -> None:
        async with client(server) as es:
            with pytest.raises(BadRequestError) as caught:
                await es.info()
            assert caught.value.status_code == 400
            assert caught.value.message == "media_type_header_exception"
            assert ("Accept version must be either version 8 or 7, but found 9"
                    in str(caught.value))
            # The client rewrites a plain JSON Accept header to its compatibility one,
            # so asking for application/json through the client API does not help ...
            with pytest.raises(BadRequestError):
                await es.options(headers={"accept": "application/json"}).info()
            # ... while the transport sends headers unchanged.
            meta, body = await es.transport.perform_request(
                "GET", "/", headers={"accept": "application/json"})
            assert meta.status == 200
            assert body["version"]["number"] == "8.15.0"

    run(scenario())
    server.version = "10.0.0"  # a 10.x cluster still accepts compatible-with=9
    assert httpx.get(server.url, headers={
        "Accept": "application/vnd.elasticsearch+json; compatible-with=9"}).status_code == 200


# -- bulk: created, conflicts, filter_path ----------------------------------------------------


def test_bulk_create_then_conflict(server: FaultBulkServer) -> None:
    async def scenario() -> None:
        async with client(server) as es:
            first = await bulk(es, ndjson(["a", "b"]))
            assert first["errors"] is False
            assert first["took"] == 1
            item = first["items"][0]["create"]
            assert item["_index"] == STREAM
            assert (item["_id"], item["status"], item["result"]) == ("a", 201, "created")
            assert statuses(first) == {"a": 201, "b": 201}

            again = await bulk(es, ndjson(["a", "c"], latency_ms=99.0))
            assert again["errors"] is True
            assert statuses(again) == {"a": 409, "c": 201}
            conflict = again["items"][0]["create"]
            assert conflict["error"]["type"] == "version_conflict_engine_exception"
            assert conflict["error"]["reason"] == (
                "[a]: version conflict, document already exists (current version [1])")

    run(scenario())
    assert sorted(server.docs) == ["a", "b", "c"]
    assert server.docs["a"]["latency_ms"] == 12.5  # not overwritten by the conflicting create
    assert server.bulk_requests == 2
    assert server.items_seen == 4
    assert server.item_statuses == {201: 3, 409: 1}
    assert server.requests_log == [("PUT", f"/{STREAM}/_bulk", 2)] * 2  # the client PUTs


def test_filter_path_as_the_sink_asks(server: FaultBulkServer) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(server) as es:
            await bulk(es, ndjson(["a"]))
            return await bulk(es, ndjson(["a", "b"]), filter_path=SINK_FILTER)

    assert run(scenario()) == {"errors": True, "items": [
        {"create": {"status": 409, "error": {
            "type": "version_conflict_engine_exception",
            "reason": "[a]: version conflict, document already exists (current version [1])"}}},
        {"create": {"status": 201}}]}


# -- per-item 429 -----------------------------------------------------------------------------


def test_per_item_429_for_some_ids_then_success(server: FaultBulkServer) -> None:
    server.per_item_429({"b", "c"}, times=2)

    async def scenario() -> None:
        async with client(server) as es:
            first = await bulk(es, ndjson(["a", "b", "c"]))
            assert first["errors"] is True
            assert statuses(first) == {"a": 201, "b": 429, "c": 429}
            error = first["items"][1]["create"]["error"]
            assert error["type"] == "es_rejected_execution_exception"
            assert error["reason"].startswith("rejected execution of primary operation")
            assert statuses(await bulk(es, ndjson(["b", "c"]))) == {"b": 429, "c": 429}
            assert statuses(await bulk(es, ndjson(["b", "c"]))) == {"b": 201, "c": 201}

    run(scenario())
    assert sorted(server.docs) == ["a", "b", "c"]
    assert server.item_statuses[429] == 4


def test_per_item_429_by_seeded_probability(server: FaultBulkServer) -> None:
    ids = [f"ev-{n:04d}" for n in range(400)]

    def rejected(srv: FaultBulkServer, order: list[str]) -> set[str]:
        async def scenario() -> dict[str, int]:
            async with client(srv) as es:
                return statuses(await bulk(es, ndjson(order)))
        return {i for i, status in run(scenario()).items() if status == 429}

    server.per_item_429(0.25, times=1, seed=7)
    chosen = rejected(server, ids)
    assert 60 < len(chosen) < 140
    assert rejected(server, sorted(chosen)) == set()  # once each, then they pass
    assert len(server.docs) == 400
    with FaultBulkServer() as same_seed, FaultBulkServer() as other_seed:
        same_seed.per_item_429(0.25, times=1, seed=7)
        other_seed.per_item_429(0.25, times=1, seed=8)
        assert rejected(same_seed, ids[::-1]) == chosen  # whatever the order of arrival
        assert rejected(other_seed, ids) != chosen


def test_per_item_429_by_predicate_until_reset(server: FaultBulkServer) -> None:
    server.per_item_429(lambda item: (item.source or {}).get("tenant") == "noisy", times=None)

    async def scenario() -> None:
        async with client(server) as es:
            for _ in range(3):
                assert statuses(await bulk(es, ndjson(["n1"], tenant="noisy"))) == {"n1": 429}
            assert statuses(await bulk(es, ndjson(["q1"], tenant="quiet"))) == {"q1": 201}
            server.reset()
            assert statuses(await bulk(es, ndjson(["n1"], tenant="noisy"))) == {"n1": 201}

    run(scenario())


# -- whole-request statuses -------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_whole_status_raises_api_error(server: FaultBulkServer, status: int) -> None:
    server.whole_status(status, times=1)

    async def scenario() -> None:
        async with client(server) as es:
            with pytest.raises(ApiError) as caught:
                await bulk(es, ndjson(["a"]))
            error = caught.value
            assert type(error) is ApiError  # no dedicated class for 429/5xx
            assert not isinstance(error, TransportError)
            assert error.status_code == error.meta.status == status
            assert error.body["status"] == status
            assert error.message == error.body["error"]["type"]
            assert statuses(await bulk(es, ndjson(["a"]))) == {"a": 201}

    run(scenario())
    assert server.bulk_requests == 2
    assert list(server.docs) == ["a"]


def test_whole_503_wording_and_transport_retries(server: FaultBulkServer) -> None:
    server.whole_status(503, times=2)

    async def scenario() -> None:
        async with client(server, max_retries=2) as es:
            # The transport itself retries 429/502/503/504 (retry_on_status) when allowed to.
            assert statuses(await bulk(es, ndjson(["a"]))) == {"a": 201}
            server.whole_status(503, times=None, reason="custom outage")
            with pytest.raises(ApiError) as caught:
                await bulk(es, ndjson(["b"]))
            assert caught.value.status_code == 503
            assert caught.value.body["error"]["reason"] == "custom outage"

    run(scenario())
    assert server.bulk_requests == 3 + 3
    body = httpx.post(server.url + "/_bulk", content=ndjson(["c"], index=STREAM)).json()
    assert body == {"error": {"root_cause": [{"type": "cluster_block_exception",
                                              "reason": "custom outage"}],
                              "type": "cluster_block_exception", "reason": "custom outage"},
                    "status": 503}


# -- blocks, rejections, mappings -------------------------------------------------------------


def test_cluster_block_write_and_flood_stage(server: FaultBulkServer) -> None:
    async def scenario() -> None:
        async with client(server) as es:
            server.cluster_block(True)
            blocked = await bulk(es, ndjson(["a", "b"]))
            assert statuses(blocked) == {"a": 403, "b": 403}
            assert blocked["items"][0]["create"]["error"] == {
                "type": "cluster_block_exception", "reason": WRITE_BLOCK}

            server.cluster_block(True, kind="flood_stage")
            flooded = await bulk(es, ndjson(["a"]))
            assert statuses(flooded) == {"a": 429}
            assert flooded["items"][0]["create"]["error"]["reason"] == FLOOD_BLOCK

            server.cluster_block(False)
            assert statuses(await bulk(es, ndjson(["a", "b"]))) == {"a": 201, "b": 201}
            server.cluster_block(True, kind="flood_stage")  # read-only-allow-delete: deletes pass
            deleted = await bulk(es, ndjson(["a"], action="delete"))
            assert deleted["items"][0]["delete"]["status"] == 200

    run(scenario())
    assert list(server.docs) == ["b"]


def test_reject_ids_is_permanent(server: FaultBulkServer) -> None:
    server.reject_ids({"bad"})
    server.reject_ids(["worse"], status=400, error_type="illegal_argument_exception",
                      reason="field [x] not allowed")

    async def scenario() -> None:
        async with client(server) as es:
            for attempt in range(3):
                answer = await bulk(es, ndjson(["bad", "worse", "fine"]))
                fine = 201 if attempt == 0 else 409
                assert statuses(answer) == {"bad": 400, "worse": 400, "fine": fine}
                bad = answer["items"][0]["create"]["error"]
                assert bad["type"] == "document_parsing_exception"
                assert answer["items"][1]["create"]["error"]["reason"] == "field [x] not allowed"

    run(scenario())
    assert list(server.docs) == ["fine"]


def test_mapping_conflict_like_elasticsearch(server: FaultBulkServer) -> None:
    server.mapping_conflict("latency_ms", "float")
    server.mapping_conflict("usage.tokens", "long")
    body = b"".join([
        ndjson(["text"], latency_ms="fast"),
        ndjson(["numeric-string"], latency_ms="12.5"),   # coerced, like Elasticsearch
        ndjson(["object"], latency_ms={"p50": 1}),
        ndjson(["boolean"], latency_ms=True),
        ndjson(["nested"], usage={"tokens": "many"}),
        ndjson(["ok"], usage={"tokens": 3}),
    ])

    async def scenario() -> dict[str, Any]:
        async with client(server) as es:
            return await bulk(es, body)

    answer = run(scenario())
    assert statuses(answer) == {"text": 400, "numeric-string": 201, "object": 400,
                                "boolean": 400, "nested": 400, "ok": 201}
    error = answer["items"][0]["create"]["error"]
    assert error["type"] == "document_parsing_exception"
    source_line = json.dumps(doc("text", latency_ms="fast"))
    column = source_line.index('"latency_ms": ') + len('"latency_ms": ') + 1
    assert error["reason"] == (
        f"[1:{column}] failed to parse field [latency_ms] of type [float] in document with id "
        "'text'. Preview of field's value: 'fast'")
    assert error["caused_by"] == {"type": "number_format_exception",
                                  "reason": 'For input string: "fast"'}
    assert "Preview of field's value: '{p50=1}'" in answer["items"][2]["create"]["error"]["reason"]
    assert re.search(r"field \[usage\.tokens\] of type \[long\] .* 'many'$",
                     answer["items"][4]["create"]["error"]["reason"])
    assert sorted(server.docs) == ["numeric-string", "ok"]


def test_failure_store_keeps_parsing_failures_and_answers_201_used(
        server: FaultBulkServer) -> None:
    server.failure_store()
    server.mapping_conflict("latency_ms", "float")
    server.per_item_429({"busy"})

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with client(server) as es:
            await bulk(es, ndjson(["dup"]))
            full = await bulk(es, ndjson(["ok", "bad", "busy", "dup"]) +
                              ndjson(["bad2"], latency_ms="fast"))
            server.failure_store(False)
            return full, await bulk(es, ndjson(["bad3"], latency_ms="fast"),
                                    filter_path=SINK_FILTER)

    full, off = run(scenario())
    results = [item["create"] for item in full["items"]]
    assert [r["status"] for r in results] == [201, 201, 429, 409, 201]
    assert "failure_store" not in results[0] and results[0]["_index"] == STREAM
    assert results[4]["failure_store"] == "used"
    assert results[4]["_index"].startswith(f".fs-{STREAM}-")
    assert results[4]["_id"] != "bad2"
    assert "failure_store" not in results[2] and "failure_store" not in results[3]
    assert [d["document"]["id"] for d in server.failure_docs] == ["bad2"]
    assert server.failure_docs[0]["error"]["type"] == "document_parsing_exception"
    assert "bad2" not in server.docs
    assert off["items"][0]["create"]["status"] == 400


def test_an_id_over_512_utf8_bytes_fails_the_whole_request_like_elasticsearch(
        server: FaultBulkServer) -> None:
    fits, over = "é" * 256, "x" * 511 + "é"  # 512 bytes; then 512 characters in 513 bytes

    async def scenario() -> tuple[dict[str, Any], BadRequestError]:
        async with client(server) as es:
            accepted = await bulk(es, ndjson([fits]))
            with pytest.raises(BadRequestError) as caught:
                await bulk(es, ndjson(["a", over, "b"]))
            return accepted, caught.value

    accepted, refused = run(scenario())
    assert statuses(accepted) == {fits: 201}
    assert refused.meta.status == 400
    error = refused.body["error"]
    assert error["type"] == "action_request_validation_exception"
    assert error["reason"] == (f"Validation Failed: 1: id [{over}] is too long, must be no "
                               "longer than 512 bytes but was: 513;")
    assert sorted(server.docs) == [fits]  # nothing of the refused request was applied


def test_refuse_requests_with_fails_every_request_holding_the_id(
        server: FaultBulkServer) -> None:
    server.refuse_requests_with(["bad"])
    server.refuse_requests_with(["odd"], error_type="illegal_argument_exception",
                                reason="something about odd")

    async def scenario() -> list[tuple[int, str, str]]:
        found = []
        async with client(server) as es:
            for ids in (["a", "bad"], ["odd", "b"], ["c"]):
                try:
                    answer = await bulk(es, ndjson(ids))
                except BadRequestError as exc:
                    found.append((400, exc.body["error"]["type"], exc.body["error"]["reason"]))
                else:
                    found.append((200, "", ",".join(sorted(statuses(answer)))))
        return found

    assert run(scenario()) == [
        (400, "action_request_validation_exception",
         "Validation Failed: 1: item [bad] refused by fault injection;"),
        (400, "illegal_argument_exception", "something about odd"),
        (200, "", "c")]
    assert sorted(server.docs) == ["c"]
    server.reset()
    assert run(_bulk_ids(server, ["bad"])) == {"bad": 201}


async def _bulk_ids(server: FaultBulkServer, ids: list[str]) -> dict[str, int]:
    async with client(server) as es:
        return statuses(await bulk(es, ndjson(ids)))


# -- delays, timeouts, outages, lost responses ------------------------------------------------


def test_delay_makes_the_client_time_out_but_the_work_is_done(server: FaultBulkServer) -> None:
    server.delay(1.0)

    async def scenario() -> None:
        async with client(server, request_timeout=0.2) as es:
            started = time.monotonic()
            with pytest.raises(ConnectionTimeout) as caught:
                await bulk(es, ndjson(["slow"]))
            assert time.monotonic() - started < 0.9
            assert not isinstance(caught.value, ConnectionError)
            assert isinstance(caught.value, TransportError)
            assert await asyncio.to_thread(server.wait_idle, 5.0)
            assert "slow" in server.docs  # Elasticsearch too finishes what the client gave up
            server.delay(0)
            assert statuses(await bulk(es, ndjson(["slow"]))) == {"slow": 409}

    run(scenario())


def test_down_refuses_and_up_serves_the_same_url(server: FaultBulkServer) -> None:
    url = server.url

    async def scenario() -> None:
        async with client(server) as es:
            assert statuses(await bulk(es, ndjson(["a"]))) == {"a": 201}  # pooled connection
            server.down()
            assert server.is_down
            for _ in range(2):
                with pytest.raises(ConnectionError) as caught:
                    await bulk(es, ndjson(["b"]))
                # The node's `errors=(httpx error,)` is replaced by the transport's list of
                # earlier attempts (empty with max_retries=0): the httpx error is the __cause__.
                assert caught.value.errors == ()
                assert isinstance(caught.value.__cause__, httpx.TransportError)
            server.up()
            assert server.url == url
            assert statuses(await bulk(es, ndjson(["b"]))) == {"b": 201}

    run(scenario())
    server.down()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2.0)
    server.up()
    assert httpx.get(url, timeout=2.0).status_code == 200
    assert server.bulk_requests == 2
    assert sorted(server.docs) == ["a", "b"]


def test_down_reset_hangs_up_after_reading(server: FaultBulkServer) -> None:
    server.down("reset")

    async def scenario() -> None:
        async with client(server) as es:
            with pytest.raises(ConnectionError) as caught:
                await bulk(es, ndjson(["a"]))
            # str() says only "Connection error" (its `errors` were emptied): read `.message`.
            assert caught.value.message == "Server disconnected without sending a response."
            server.up()
            assert statuses(await bulk(es, ndjson(["a"]))) == {"a": 201}

    run(scenario())
    server.down("reset")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(server.url, timeout=2.0)
    server.reset()
    assert httpx.get(server.url, timeout=2.0).status_code == 200


def test_lost_response_then_retry_meets_409(server: FaultBulkServer) -> None:
    server.lose_responses(1)

    async def scenario() -> None:
        async with client(server) as es:
            with pytest.raises(ConnectionError):
                await bulk(es, ndjson(["a"]))
            assert "a" in server.docs
            assert statuses(await bulk(es, ndjson(["a"]))) == {"a": 409}
        server.lose_responses(1)
        async with client(server, max_retries=1) as es:
            # The transport retries connection errors even for a bulk: the items then conflict.
            assert statuses(await bulk(es, ndjson(["b"]))) == {"b": 409}

    run(scenario())
    assert server.bulk_requests == 4


def test_stop_does_not_wait_for_a_delayed_request() -> None:
    srv = FaultBulkServer().start()
    srv.delay(30.0)
    with httpx.Client(timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post(srv.url + "/_bulk", content=ndjson(["a"], index=STREAM))
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 3.0
    assert srv.wait_idle(3.0)
    assert srv.docs == {}


# -- protocol details with plain httpx --------------------------------------------------------


def test_ndjson_protocol_with_plain_httpx(server: FaultBulkServer) -> None:
    headers = {"Content-Type": "application/x-ndjson"}
    body = (ndjson(["a"], action="index", index="one") + ndjson(["a"], action="index", index="one")
            + b'{"update":{"_index":"one","_id":"a"}}\n{"doc":{"extra":1}}\n'
            + b'{"update":{"_index":"one","_id":"zz"}}\n{"doc":{"extra":1}}\n'
            + ndjson(["a"], action="delete", index="one")
            + b'{"create":{"_index":"one"}}\n{"x":1}\n'
            + b'{"create":{"_index":"one","_id":"broken"}}\n{"x":\n')
    with httpx.Client(base_url=server.url, timeout=5.0, headers=headers) as http:
        answer = http.post("/_bulk", content=body).json()
        results = [next(iter(item.items())) for item in answer["items"]]
        assert [(action, r["status"], r.get("result")) for action, r in results] == [
            ("index", 201, "created"), ("index", 200, "updated"), ("update", 200, "updated"),
            ("update", 404, None), ("delete", 200, "deleted"), ("create", 201, "created"),
            ("create", 400, None)]
        assert results[3][1]["error"]["type"] == "document_missing_exception"
        assert len(results[5][1]["_id"]) == 20  # generated, like Elasticsearch's
        assert answer["errors"] is True

        gz = http.post("/one/_bulk", content=gzip.compress(ndjson(["g"])),
                       headers={"Content-Encoding": "gzip"})
        assert gz.json()["items"][0]["create"]["_index"] == "one"

        no_newline = http.post("/_bulk", content=ndjson(["n"], index="one").rstrip(b"\n"))
        assert no_newline.status_code == 400
        assert no_newline.json()["error"]["reason"] == (
            "The bulk request must be terminated by a newline [\\n]")
        assert http.post("/_bulk", content=b"").json()["error"]["reason"] == (
            "Validation Failed: 1: no requests added;")
        missing = http.post("/_bulk", content=ndjson(["m"]))
        assert missing.json()["error"]["reason"] == "Validation Failed: 1: index is missing;"
        unknown = http.post("/_bulk", content=b'{"upsert":{}}\n{}\n')
        assert unknown.json()["error"]["type"] == "illegal_argument_exception"
    assert sorted(server.docs) == sorted(["g", results[5][1]["_id"]])


def test_data_stream_rules() -> None:
    with FaultBulkServer(data_streams=True) as srv, httpx.Client(timeout=5.0) as http:
        body = (ndjson(["ok"]) + ndjson(["indexed"], action="index")
                + b'{"create":{"_id":"no-ts"}}\n{"a":1}\n')
        answer = http.post(f"{srv.url}/{STREAM}/_bulk", content=body).json()
        created, indexed, no_ts = (item[action] for item, action in
                                   zip(answer["items"], ["create", "index", "create"],
                                       strict=True))
        assert re.fullmatch(rf"\.ds-{re.escape(STREAM)}-\d{{4}}\.\d\d\.\d\d-000001",
                            created["_index"])
        assert indexed["error"]["reason"] == (
            "only write ops with an op_type of create are allowed in data streams")
        assert no_ts["error"]["reason"].endswith(
            "failed to parse: data stream timestamp field [@timestamp] is missing")
        assert list(srv.docs) == ["ok"]


def test_predicate_errors_are_visible(server: FaultBulkServer) -> None:
    def broken(item: BulkItem) -> bool:
        raise KeyError(item.id)

    server.reject_where(broken)

    async def scenario() -> None:
        async with client(server) as es:
            with pytest.raises(ApiError) as caught:
                await bulk(es, ndjson(["a"]))
            assert caught.value.status_code == 500

    run(scenario())
    assert server.hook_errors == ["fault predicate raised KeyError('a') for item 'a'"]


# -- bookkeeping ------------------------------------------------------------------------------


def test_reset_keeps_docs_and_clear_forgets_them(server: FaultBulkServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        http.post(f"/{STREAM}/_bulk", content=ndjson(["a"]))
        server.cluster_block(True)
        server.whole_status(503, times=None)
        server.delay(0.01)
        server.reset()
        assert http.post(f"/{STREAM}/_bulk", content=ndjson(["b"])).status_code == 200
        assert sorted(server.docs) == ["a", "b"]
        server.clear()
        assert (server.docs, server.bulk_requests, server.items_seen) == ({}, 0, 0)
        assert server.requests_log == []
        answer = http.post(f"/{STREAM}/_bulk", content=ndjson(["a"])).json()
        assert answer["items"][0]["create"]["status"] == 201


def test_requests_log_is_bounded() -> None:
    with FaultBulkServer(log_size=3) as srv, httpx.Client(base_url=srv.url, timeout=5.0) as http:
        for n in range(5):
            http.post(f"/{STREAM}/_bulk", content=ndjson([f"e{m}" for m in range(n + 1)]))
        assert srv.requests_log == [("POST", f"/{STREAM}/_bulk", n) for n in (3, 4, 5)]
        assert srv.bulk_requests == 5
        assert srv.items_seen == 15


def test_concurrent_bulks_and_fault_changes_are_thread_safe(server: FaultBulkServer) -> None:
    stop = threading.Event()

    def flip() -> None:  # script faults from another thread while requests run
        while not stop.is_set():
            server.per_item_429(lambda item: item.id.endswith("7"), times=1)
            server.reset()

    flipper = threading.Thread(target=flip, daemon=True)

    async def scenario() -> list[dict[str, Any]]:
        async with client(server, connections_per_node=8) as es:
            batches = [[f"e{n % 150}" for n in range(start, start + 50)]
                       for start in range(0, 500, 25)]
            return await asyncio.gather(*(bulk(es, ndjson(ids)) for ids in batches))

    flipper.start()
    try:
        answers = run(scenario())
    finally:
        stop.set()
        flipper.join(5.0)
    counted: dict[int, int] = {}
    for answer in answers:
        for status in statuses(answer).values():
            counted[status] = counted.get(status, 0) + 1
    assert set(counted) <= {201, 409, 429}
    assert counted[201] == len(server.docs)
    assert {f"e{n}" for n in range(150) if n % 10 != 7} <= set(server.docs)
    assert server.items_seen == 1000 == sum(server.item_statuses.values())
    assert server.item_statuses[201] == len(server.docs)
