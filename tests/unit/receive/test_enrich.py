"""Enrichment processors one by one, then the composed Enricher and its store row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.receive.body import derived_id, validate
from ingest.receive.enrich import (
    Cost,
    Draft,
    Enricher,
    LatencyBucket,
    assign_id,
    count_tokens,
    event_time,
    stamp,
    status_tags,
    unpriced,
)
from ingest.receive.prices import PriceBook, Rate
from ingest.records import Row, iso_ms

PROPS = settings(max_examples=200, deadline=None)
RECEIVED = 1_700_000_100_000  # 2023-11-14T22:15:00Z
EVENT_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unix_ms(when: datetime) -> int:
    """Exact integer milliseconds, no floats involved."""
    return (when - EPOCH) // timedelta(milliseconds=1)


def draft(**doc) -> Draft:
    return Draft(dict(doc), RECEIVED)


def book(**rates: tuple[float, float]) -> PriceBook:
    return PriceBook({name: Rate(p, c, "override") for name, (p, c) in rates.items()},
                     lookup=None)


# stamp ---------------------------------------------------------------------------------------


def test_iso_ms_format():
    assert unix_ms(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)) == EVENT_MS
    assert iso_ms(EVENT_MS) == "2023-11-14T22:13:20.000Z"
    assert iso_ms(EVENT_MS + 7) == "2023-11-14T22:13:20.007Z"
    assert iso_ms(RECEIVED) == "2023-11-14T22:15:00.000Z"


def test_stamp_from_milliseconds():
    out = stamp(draft(timestamp=EVENT_MS + 250))
    assert out.ts_ms == EVENT_MS + 250
    assert out.doc["@timestamp"] == "2023-11-14T22:13:20.250Z"
    assert out.doc["timestamp_source"] == "event"
    assert out.doc["received_at"] == "2023-11-14T22:15:00.000Z"


@pytest.mark.parametrize(("value", "expected_ms"), [
    (1_700_000_000, EVENT_MS),
    (1_700_000_000.5, EVENT_MS + 500),
    ("1700000000", EVENT_MS),
])
def test_stamp_tolerates_seconds(value, expected_ms):
    out = stamp(draft(timestamp=value))
    assert out.ts_ms == expected_ms
    assert out.doc["timestamp_source"] == "event_seconds"


@pytest.mark.parametrize(("value", "when"), [
    ("2023-11-14T22:13:20Z", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ("2023-11-14T22:13:20.250Z", datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)),
    ("2023-11-15T05:13:20+07:00", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ("2023-11-14T22:13:20", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    (" 2023-11-14 ", datetime(2023, 11, 14, tzinfo=UTC)),
    ("1700000000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
])
def test_stamp_from_iso_and_numeric_text(value, when):
    out = stamp(draft(timestamp=value))
    assert out.ts_ms == unix_ms(when)
    assert out.doc["timestamp_source"] == "event"
    assert out.doc["@timestamp"] == iso_ms(unix_ms(when))


@pytest.mark.parametrize("value", [
    None, "", "yesterday", "2023-13-45T00:00:00Z", True, False, [EVENT_MS], {"ms": 1},
    -1, 0, 12, 10**20, float("nan"), float("inf"), "1999-12-31T23:59:59Z",
    "2100-01-01T00:00:00Z", "-1700000000000", "1_700_000_000_000",
    "--1700000000000", "²", "1700000000000²",
])
def test_stamp_falls_back_to_received_time(value):
    out = stamp(draft(timestamp=value))
    assert out.ts_ms == RECEIVED
    assert out.doc["@timestamp"] == "2023-11-14T22:15:00.000Z"
    assert out.doc["timestamp_source"] == "received"


def test_stamp_missing_timestamp_falls_back():
    out = stamp(draft(id="a"))
    assert (out.ts_ms, out.doc["timestamp_source"]) == (RECEIVED, "received")


# Text that looks almost like a number or a date, where parsers tend to slip.
timestampish = st.text(st.sampled_from("-+0123456789²³¹٣ .:TZ_e"), max_size=20)


@PROPS
@given(st.one_of(st.text(max_size=30), timestampish, st.integers(), st.floats(), st.none(),
                 st.booleans()))
@example("--5")
@example("²")
def test_event_time_never_raises(value):
    found = event_time(value)
    assert found is None or 946_684_800_000 <= found[0] < 4_102_444_800_000


@PROPS
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                    timezones=st.just(UTC)))
@example(datetime(2004, 9, 7, 19, 6, 44, 919_000, tzinfo=UTC))
@example(datetime(2004, 2, 1, 0, 0, 0, 1_000, tzinfo=UTC))
def test_iso_milliseconds_survive_exactly(when):
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    text = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert event_time(text) == (unix_ms(when), "event")


# latency bucket ------------------------------------------------------------------------------


@pytest.mark.parametrize(("latency", "bucket"), [
    (0, "ultra-fast"), (49.9, "ultra-fast"), (49.999999, "ultra-fast"),
    (50, "fast"), (50.0, "fast"), (99.9, "fast"),
    (100, "normal"), (199.9, "normal"),
    (200, "slow"), (200.0001, "slow"), (60_000, "slow"),
])
def test_latency_bucket_boundaries(latency, bucket):
    out = LatencyBucket()(draft(latency_ms=latency))
    assert out.doc["latency_bucket"] == bucket
    assert out.doc["latency_ms"] == latency


def test_latency_falls_back_to_response_time_ms():
    out = LatencyBucket()(draft(response_time_ms=150))
    assert out.doc["latency_ms"] == 150
    assert out.doc["latency_bucket"] == "normal"
    assert out.doc["response_time_ms"] == 150


def test_latency_ms_wins_over_response_time_ms():
    out = LatencyBucket()(draft(latency_ms=10, response_time_ms=500))
    assert (out.doc["latency_ms"], out.doc["latency_bucket"]) == (10, "ultra-fast")


def test_no_latency_no_bucket():
    out = LatencyBucket()(draft(id="a"))
    assert "latency_bucket" not in out.doc and "latency_ms" not in out.doc


def test_custom_latency_bounds():
    bucket = LatencyBucket(((10, "a"), (20, "b")), last="c")
    assert [bucket(draft(latency_ms=v)).doc["latency_bucket"] for v in (9, 10, 19, 20)] == [
        "a", "b", "b", "c"]


# status tags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "status_class", "tags"), [
    (100, "1xx", None), (200, "2xx", None), (204, "2xx", None), (301, "3xx", None),
    (399, "3xx", None), (400, "4xx", ["error"]), (404, "4xx", ["error"]),
    (429, "429", ["error", "rate_limited"]), (499, "4xx", ["error"]),
    (500, "5xx", ["error"]), (503, "5xx", ["error"]),
])
def test_status_tags(status, status_class, tags):
    out = status_tags(draft(status_code=status))
    assert out.doc["status_class"] == status_class
    assert out.doc.get("tags") == tags


@pytest.mark.parametrize(("existing", "expected"), [
    (["vip", "beta"], ["vip", "beta", "error"]),
    ("vip", ["vip", "error"]),
    ([], ["error"]),
])
def test_status_tags_keeps_existing_tags(existing, expected):
    assert status_tags(draft(status_code=500, tags=existing)).doc["tags"] == expected


def test_status_tags_leave_tags_alone_on_success():
    assert status_tags(draft(status_code=200, tags=["vip"])).doc["tags"] == ["vip"]


def test_no_status_no_class():
    out = status_tags(draft(id="a"))
    assert "status_class" not in out.doc and "tags" not in out.doc


# tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("usage", "tokens"), [
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, 15),
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 99}, 99),
    ({"prompt_tokens": 10, "completion_tokens": 5}, 15),
    ({"prompt_tokens": 10}, 10),
    ({"completion_tokens": 7}, 7),
    ({"total_tokens": 0}, 0),
    ({"prompt_tokens": 0, "completion_tokens": 0}, 0),
])
def test_count_tokens(usage, tokens):
    assert count_tokens(draft(usage=usage)).doc["tokens_used"] == tokens


@pytest.mark.parametrize("usage", [None, {}, {"cached_tokens": 5}])
def test_count_tokens_without_counts(usage):
    assert "tokens_used" not in count_tokens(draft(usage=usage)).doc


# cost ----------------------------------------------------------------------------------------


def test_cost_hand_computed():
    # gpt-4o at 2.50 / 10.00 per 1M: 1000 prompt -> 0.0025, 500 completion -> 0.005.
    out = Cost(book(**{"gpt-4o": (2.5, 10.0)}))(Draft(
        {"model": "gpt-4o", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
        RECEIVED, EVENT_MS))
    assert out.doc["computed_cost_usd"] == pytest.approx(0.0075, abs=1e-12)
    assert out.doc["price_source"] == "override"
    assert "cost_mismatch" not in out.doc


@pytest.mark.parametrize(("reported", "mismatch"), [
    (0.0075, False),
    (0.00755, False),   # 0.67 % off: inside the default 1 %
    (0.00745, False),
    (0.0076, True),     # 1.3 % off
    (0.0080, True),
    (0.0, True),
    (0.015, True),
])
def test_cost_mismatch_flag(reported, mismatch):
    out = Cost(book(**{"gpt-4o": (2.5, 10.0)}))(Draft(
        {"model": "GPT-4o", "cost_usd": reported,
         "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}, RECEIVED, EVENT_MS))
    assert out.doc["cost_mismatch"] is mismatch
    assert out.doc["cost_usd"] == reported


def test_cost_absolute_tolerance_for_tiny_amounts():
    # 1 prompt token at 0.15/1M is 1.5e-7; a report of 0 is within the 1e-6 absolute tolerance.
    out = Cost(book(m=(0.15, 0.6)))(Draft(
        {"model": "m", "cost_usd": 0.0, "usage": {"prompt_tokens": 1}}, RECEIVED, EVENT_MS))
    assert out.doc["computed_cost_usd"] == pytest.approx(1.5e-7)
    assert out.doc["cost_mismatch"] is False


@pytest.mark.parametrize("doc", [
    {"model": "no-such-model", "usage": {"prompt_tokens": 5}},
    {"model": "", "usage": {"prompt_tokens": 5}},
    {"model": "   ", "usage": {"prompt_tokens": 5}},
    {"usage": {"prompt_tokens": 5}},
    {"model": None},
    {"model": "x" * 10_000, "usage": {"prompt_tokens": 5}},
])
def test_cost_unknown_model(doc):
    out = Cost(book(m=(1.0, 1.0)))(Draft(dict(doc), RECEIVED, EVENT_MS))
    assert out.doc["price_source"] == "unknown"
    assert "computed_cost_usd" not in out.doc
    assert "cost_mismatch" not in out.doc


def test_cost_known_model_without_token_counts():
    out = Cost(book(m=(1.0, 1.0)))(Draft({"model": "m", "usage": {"total_tokens": 9}},
                                         RECEIVED, EVENT_MS))
    assert out.doc["price_source"] == "override"
    assert "computed_cost_usd" not in out.doc


events = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.none(), st.sampled_from(["m", "M ", "unknown", ""]), st.text()),
    "cost_usd": st.one_of(st.none(), st.floats(min_value=0, max_value=1e12)),
    "usage": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "prompt_tokens": st.integers(min_value=0, max_value=10**15),
        "completion_tokens": st.integers(min_value=0, max_value=10**15),
        "total_tokens": st.integers(min_value=0, max_value=10**15),
    })),
    "status_code": st.integers(min_value=100, max_value=599),
    "latency_ms": st.floats(min_value=0, max_value=1e9),
    # Integers as orjson parses them: 64-bit (larger ones arrive as floats).
    "timestamp": st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.text(),
                           st.floats(), timestampish),
})


@PROPS
@given(event=events)
@example({"model": "m", "usage": {"prompt_tokens": 10**15, "completion_tokens": 10**15},
          "cost_usd": 0.0})
@example({"model": "M ", "usage": {}, "timestamp": "²"})
def test_enricher_never_raises_on_a_validated_event(event):
    enricher = Enricher.default(book(m=(2.0, 8.0)))
    row = enricher.row(validate(event), b"{}", RECEIVED)
    assert isinstance(row, Row)
    doc = orjson.loads(row.doc)
    assert doc["price_source"] in ("override", "unknown")
    assert doc["timestamp_source"] in ("event", "event_seconds", "received")


# Enricher.row --------------------------------------------------------------------------------


def test_enricher_row_columns():
    raw = b'{"id":"req_1", "...": "as sent"}'
    event = validate({
        "id": "req_1", "model": "gpt-4o", "status_code": 429, "latency_ms": 75,
        "usage": {"prompt_tokens": 2000, "completion_tokens": 100},
        "cost_usd": 0.006, "error": "rate limit exceeded",
        "user_metadata": {"user_id": "u7", "trace_id": "t9"}, "timestamp": EVENT_MS,
        "custom": {"k": 1},
    })
    row = Enricher.default(book(**{"gpt-4o": (2.5, 10.0)})).row(event, raw, RECEIVED)
    # 2000 * 2.5 / 1M + 100 * 10 / 1M = 0.005 + 0.001 = 0.006
    assert row.event_id == "req_1"
    assert row.received_at == RECEIVED
    assert row.ts == EVENT_MS
    assert row.model == "gpt-4o"
    assert row.status_code == 429
    assert row.latency_ms == 75
    assert row.user_id == "u7"
    assert row.trace_id == "t9"
    assert row.error_message == "rate limit exceeded"
    assert row.prompt_tokens == 2000
    assert row.completion_tokens == 100
    assert row.tokens_used == 2100
    assert row.cost_usd == 0.006
    assert row.computed_cost_usd == pytest.approx(0.006, abs=1e-12)
    assert row.raw == raw
    doc = orjson.loads(row.doc)
    assert doc["latency_bucket"] == "fast"
    assert doc["tags"] == ["error", "rate_limited"]
    assert doc["status_class"] == "429"
    assert doc["cost_mismatch"] is False
    assert doc["@timestamp"] == "2023-11-14T22:13:20.000Z"
    assert doc["received_at"] == "2023-11-14T22:15:00.000Z"
    assert doc["custom"] == {"k": 1}
    assert doc["error"] == {"message": "rate limit exceeded"}
    assert "id_source" not in doc


def test_enricher_row_minimal_event_gets_a_derived_id():
    event = validate({"model": "m"})
    expected = derived_id({"model": "m"})
    row = Enricher.default(book()).row(event, b'{"model":"m"}', RECEIVED)
    assert row.event_id == expected
    assert row.ts == RECEIVED
    assert (row.status_code, row.latency_ms, row.user_id, row.trace_id, row.error_message,
            row.prompt_tokens, row.completion_tokens, row.tokens_used, row.cost_usd,
            row.computed_cost_usd) == (None,) * 10
    doc = orjson.loads(row.doc)
    assert doc["id"] == expected and doc["id_source"] == "derived"
    assert doc["timestamp_source"] == "received"
    assert doc["price_source"] == "unknown"


def test_assign_id_is_the_same_for_the_same_content():
    a = assign_id(draft(model="m", usage={"prompt_tokens": 1}))
    b = assign_id(draft(usage={"prompt_tokens": 1}, model="m"))
    assert a.doc["id"] == b.doc["id"]
    assert assign_id(draft(id="given")).doc["id"] == "given"


def test_enricher_uses_the_given_processors_in_order():
    seen: list[str] = []

    def first(d: Draft) -> Draft:
        seen.append("first")
        d.doc["x"] = 1
        return d

    def second(d: Draft) -> Draft:
        seen.append("second")
        d.doc["y"] = d.doc["x"] + 1
        return d

    out = Enricher([first, second])({}, RECEIVED)
    assert seen == ["first", "second"]
    assert out.doc == {"x": 1, "y": 2}


# unpriced ------------------------------------------------------------------------------------


def _row(**overrides) -> Row:
    base = dict(event_id="e", received_at=0, ts=0, model="m", status_code=200, latency_ms=1.0,
                user_id=None, trace_id=None, error_message=None, prompt_tokens=10,
                completion_tokens=5, tokens_used=15, cost_usd=None, computed_cost_usd=None,
                doc=b"{}", raw=b"{}")
    base.update(overrides)
    return Row(**base)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, True),
    ({"completion_tokens": None}, True),
    ({"prompt_tokens": None}, True),
    ({"computed_cost_usd": 0.0}, False),
    ({"computed_cost_usd": 0.1}, False),
    ({"model": None}, False),
    ({"prompt_tokens": None, "completion_tokens": None}, False),
])
def test_unpriced(overrides, expected):
    assert unpriced(_row(**overrides)) is expected


def test_unpriced_through_the_enricher():
    enricher = Enricher.default(book(known=(1.0, 1.0)))
    usage = {"prompt_tokens": 3}
    assert unpriced(enricher.row(validate({"model": "mystery", "usage": usage}), b"", 0))
    assert not unpriced(enricher.row(validate({"model": "known", "usage": usage}), b"", 0))
