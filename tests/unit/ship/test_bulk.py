"""Pure bulk stages: actions, chunking by count and bytes, item classification, backoff."""

from __future__ import annotations

import random

import orjson
import pytest

from ingest import records
from ingest.records import Pending
from ingest.ship import bulk

INDEX = "logs-holysheep.requests-default"


def item(seq: int, doc: dict[str, object] | None = None, raw: bytes = b'{"id":"x"}') -> Pending:
    return Pending(seq, f"id-{seq}", orjson.dumps(doc or {"id": f"id-{seq}", "model": "m"}), raw)


def test_action_is_create_with_the_event_id_and_the_raw_event_unindexed() -> None:
    line = bulk.action(item(7, raw=b'{"id": "id-7",  "x": 1}'), INDEX)
    meta, source, end = line.split(b"\n")
    assert end == b""
    assert orjson.loads(meta) == {"create": {"_index": INDEX, "_id": "id-7"}}
    assert orjson.loads(source) == {"id": "id-7", "model": "m",
                                    "event": {"original": '{"id": "id-7",  "x": 1}'}}


def test_source_merges_an_existing_event_object() -> None:
    doc = {"id": "a", "event": {"kind": "x"}, "note": 'say "event": no'}
    out = orjson.loads(bulk.source(orjson.dumps(doc), b"RAW"))
    assert out["event"] == {"kind": "x", "original": "RAW"}
    assert out["note"] == 'say "event": no'


@pytest.mark.parametrize("value", [None, "text", 5])
def test_source_keeps_a_non_object_event_value(value: object) -> None:
    out = orjson.loads(bulk.source(orjson.dumps({"id": "a", "event": value}), b"R"))
    expected = {"original": "R"} if value is None else {"value": value, "original": "R"}
    assert out["event"] == expected


def test_chunks_respect_count_and_bytes() -> None:
    items = [item(i) for i in range(10)]
    by_count = list(bulk.chunks(items, INDEX, max_docs=4, max_bytes=10**9))
    assert [len(b) for b, _ in by_count] == [4, 4, 2]
    one = len(bulk.action(items[0], INDEX))
    by_bytes = list(bulk.chunks(items, INDEX, max_docs=100, max_bytes=one * 3))
    assert all(len(body) <= one * 3 for _, body in by_bytes)
    assert sum(len(b) for b, _ in by_bytes) == 10
    # Bodies are exactly the concatenated actions, in order.
    assert b"".join(body for _, body in by_count) == b"".join(bulk.action(i, INDEX) for i in items)


def test_an_oversized_document_travels_alone() -> None:
    big = item(1, {"id": "id-1", "blob": "x" * 5000})
    batches = list(bulk.chunks([item(0), big, item(2)], INDEX, max_docs=10, max_bytes=1000))
    assert [[p.seq for p in b] for b, _ in batches] == [[0], [1], [2]]


def answer(*statuses: int | tuple[int, str, str]) -> dict[str, object]:
    items = []
    for status in statuses:
        if isinstance(status, tuple):
            code, kind, reason = status
            items.append({"create": {"status": code, "error": {"type": kind, "reason": reason}}})
        else:
            items.append({"create": {"status": status}})
    return {"errors": True, "items": items}


def test_classify_every_item_kind() -> None:
    sent = [item(i) for i in range(7)]
    outcome = bulk.classify(sent, answer(
        201, 409, (429, "es_rejected_execution_exception", "queue full"), 503,
        (400, "document_parsing_exception", "failed to parse field [latency_ms]"),
        (404, "index_not_found_exception", "no such index"), 200))
    assert [p.seq for p in outcome.shipped] == [0, 1, 6]
    assert outcome.conflicts == 1
    assert [p.seq for p in outcome.retry] == [2, 3]
    assert all(p.attempts == 1 for p in outcome.retry)
    assert [(d.item.seq, d.status, d.error_type) for d in outcome.dead] == [
        (4, 400, "document_parsing_exception"), (5, 404, "index_not_found_exception")]
    assert "latency_ms" in outcome.dead[0].reason
    assert outcome.blocked is None


@pytest.mark.parametrize("error", [
    (403, "cluster_block_exception", "index [x] blocked by: [FORBIDDEN/8/index write (api)];"),
    (429, "cluster_block_exception", "index [x] blocked by: [TOO_MANY_REQUESTS/12/disk usage "
     "exceeded flood-stage watermark, index has read-only-allow-delete block];"),
])
def test_a_cluster_block_is_retried_and_reported_never_dead_lettered(
        error: tuple[int, str, str]) -> None:
    outcome = bulk.classify([item(1)], answer(error))
    assert outcome.dead == []
    assert [p.seq for p in outcome.retry] == [1]
    assert outcome.blocked == error[2]


@pytest.mark.parametrize(("status", "retried"), [(500, True), (502, True), (507, True),
                                                 (429, True), (0, True), (501, False),
                                                 (413, False)])
def test_item_statuses_follow_the_one_retry_policy(status: int, retried: bool) -> None:
    outcome = bulk.classify([item(1)], answer((status, "some_exception", "why")))
    assert [p.seq for p in outcome.retry] == ([1] if retried else [])
    assert [d.item.seq for d in outcome.dead] == ([] if retried else [1])


def test_a_document_kept_in_the_failure_store_is_a_dead_letter_not_shipped() -> None:
    used = {"create": {"_index": ".fs-logs-holysheep.requests-default-2026.01.01-000001",
                       "status": 201, "failure_store": "used"}}
    refused = {"create": {"status": 400, "failure_store": "not_enabled", "error": {
        "type": "document_parsing_exception", "reason": "failed to parse field [latency_ms]"}}}
    outcome = bulk.classify([item(1), item(2), item(3)], {"errors": False, "items": [
        {"create": {"status": 201}}, used, refused]})
    assert [p.seq for p in outcome.shipped] == [1]
    assert [(d.item.seq, d.status, d.error_type) for d in outcome.dead] == [
        (2, 201, "failure_store_used"), (3, 400, "document_parsing_exception")]
    assert "failure store" in outcome.dead[0].reason
    assert "::failures" in outcome.dead[0].reason


def test_the_filter_path_keeps_what_classification_reads() -> None:
    kept = set(bulk.FILTER_PATH.split(","))
    assert {"items.*.status", "items.*.error.type", "items.*.error.reason",
            "items.*.failure_store"} <= kept


def test_ids_over_512_utf8_bytes_are_dead_letters_before_sending() -> None:
    long_ids = ["é" * 257, "x" * 513, "😀" * 129]
    fitting = ["é" * 256, "x" * 512, "😀" * 128, "short"]
    items = [Pending(n, event_id, b'{"id":1}', b"{}")
             for n, event_id in enumerate([fitting[0], long_ids[0], fitting[1], long_ids[1],
                                           fitting[2], long_ids[2], fitting[3]])]
    fit, dead = bulk.unsendable(items)
    assert [p.event_id for p in fit] == fitting
    assert [(d.item.event_id, d.status, d.error_type) for d in dead] == [
        (i, 400, "id_too_long") for i in long_ids]
    assert "514 bytes" in dead[0].reason and "512-byte" in dead[0].reason


def test_outcomes_of_parts_merge_into_one() -> None:
    a = records.Outcome(shipped=[item(1), item(2)], conflicts=1, retry=[item(3)])
    b = records.Outcome(dead=[records.DeadLetter(item(4), 400, "x", "y")], blocked="read-only")
    merged = bulk.merge([a, b, records.Outcome()])
    assert [p.seq for p in merged.shipped] == [1, 2] and merged.conflicts == 1
    assert [p.seq for p in merged.retry] == [3] and [d.item.seq for d in merged.dead] == [4]
    assert merged.blocked == "read-only"


def test_an_answer_that_does_not_pair_up_retries_everything() -> None:
    sent = [item(1), item(2)]
    outcome = bulk.classify(sent, {"errors": False, "items": [{"create": {"status": 201}}]})
    assert outcome.shipped == [] and outcome.dead == []
    assert [p.seq for p in outcome.retry] == [1, 2]


def test_backoff_is_full_jitter_under_the_cap() -> None:
    rng = random.Random(3)
    delays = [bulk.backoff(a, 0.5, 8.0, rng) for a in range(12) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(bulk.backoff(0, 0.5, 8.0, rng) for _ in range(200)) <= 0.5
    assert max(delays) > 4.0  # grows towards the cap
    assert bulk.backoff(10_000, 0.5, 8.0, rng) <= 8.0


def test_a_document_at_the_nesting_limit_still_gets_event_original():
    from ingest.receive.body import encode

    nested: object = 1
    for _ in range(253):  # with the event object: the 254 levels the receiver allows
        nested = [nested]
    doc = encode({"id": "deep", "event": nested})
    sent = orjson.loads(bulk.source(doc, b'{"id":"deep"}'))
    assert sent["event"]["original"] == '{"id":"deep"}'
    assert orjson.loads(sent["event"]["value"]) == nested
