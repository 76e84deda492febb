"""Body handling: content types, bounded gunzip, batch splitting, the event model, derived ids."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import EventInvalid, MalformedPayload, PayloadTooLarge, UnsupportedMediaType
from ingest.receive.body import (
    MAX_COUNT,
    MAX_ID_BYTES,
    Item,
    body_format,
    check_encoding,
    derived_id,
    gunzip,
    split,
    validate,
)

PROPS = settings(max_examples=200, deadline=None)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)

# body_format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "expected"), [
    (None, "json"),
    ("", "json"),
    ("application/json", "json"),
    ("application/json; charset=utf-8", "json"),
    ("  Application/JSON ;charset=UTF-8", "json"),
    ("text/json", "json"),
    ("application/vnd.holysheep.event+json", "json"),
    ("application/cloudevents-batch+json; charset=utf-8", "json"),
    ("application/x-ndjson", "ndjson"),
    ("application/ndjson", "ndjson"),
    ("application/jsonl", "ndjson"),
    ("application/x-jsonlines", "ndjson"),
    ("application/jsonlines", "ndjson"),
    ("APPLICATION/X-NDJSON; charset=utf-8", "ndjson"),
])
def test_body_format(content_type, expected):
    assert body_format(content_type) == expected


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "application/octet-stream", "json", "application/jsonx",
])
def test_body_format_refuses_other_media_types_with_415(content_type):
    with pytest.raises(UnsupportedMediaType) as info:
        body_format(content_type)
    assert content_type.split(";")[0].strip().lower() in info.value.message


# check_encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(("coding", "gzipped"), [
    (None, False), ("", False), ("identity", False), ("IDENTITY", False),
    ("gzip", True), (" GZip ", True), ("x-gzip", True),
])
def test_check_encoding(coding, gzipped):
    assert check_encoding(coding) is gzipped


@pytest.mark.parametrize("coding", ["br", "deflate", "compress", "zstd", "gzip, br"])
def test_check_encoding_refuses_other_codings(coding):
    with pytest.raises(UnsupportedMediaType):
        check_encoding(coding)


# gunzip --------------------------------------------------------------------------------------


@PROPS
@given(data=st.binary(max_size=2048), extra=st.integers(min_value=0, max_value=100))
def test_gunzip_round_trips_within_the_limit(data, extra):
    assert gunzip(gzip.compress(data), len(data) + extra) == data


@PROPS
@given(data=st.binary(min_size=1, max_size=2048), short=st.integers(min_value=1, max_value=2048))
def test_gunzip_over_the_limit_is_too_large(data, short):
    limit = max(0, len(data) - short)
    with pytest.raises(PayloadTooLarge):
        gunzip(gzip.compress(data), limit)


def test_gunzip_exactly_at_the_limit_is_fine():
    data = b"x" * 1000
    assert gunzip(gzip.compress(data), 1000) == data
    with pytest.raises(PayloadTooLarge):
        gunzip(gzip.compress(data), 999)


def test_gunzip_bomb_is_stopped_without_inflating_it_all():
    limit = 1 << 20
    bomb = gzip.compress(b"\0" * (64 << 20), 9)
    assert len(bomb) < limit // 10
    with pytest.raises(PayloadTooLarge, match=str(limit)):
        gunzip(bomb, limit)


@pytest.mark.parametrize("garbage", [
    b"not gzip at all", b"\x1f\x8b\x08\x00garbage-after-magic-bytes-zzzzzzzzzz",
    zlib.compress(b"zlib is not gzip"), b'{"id": "plain json"}',
])
def test_gunzip_garbage_is_malformed(garbage):
    with pytest.raises(MalformedPayload):
        gunzip(garbage, 1 << 20)


@PROPS
@given(data=st.binary(max_size=1024), data_cut=st.data())
def test_gunzip_truncated_is_malformed(data, data_cut):
    packed = gzip.compress(data)
    cut = data_cut.draw(st.integers(min_value=0, max_value=len(packed) - 1), label="cut")
    with pytest.raises(MalformedPayload):
        gunzip(packed[:cut], len(data) + 10)


def test_gunzip_never_silently_drops_later_members():
    # RFC 1952: a gzip file is a series of members; appending gzipped NDJSON chunks is common.
    # Reading every member (as gzip.decompress does) or refusing the body are both fine;
    # returning only the first member loses the rest of the events behind a 2xx.
    body = gzip.compress(b'{"id":"a"}\n') + gzip.compress(b'{"id":"b"}\n')
    assert gzip.decompress(body) == b'{"id":"a"}\n{"id":"b"}\n'
    try:
        out = gunzip(body, 1 << 20)
    except MalformedPayload:
        return
    assert out == b'{"id":"a"}\n{"id":"b"}\n'


# split ---------------------------------------------------------------------------------------


def test_split_one_object_keeps_the_body_bytes():
    body = b'{ "id": "a",  "model": "gpt-4o" }'
    assert split(body, "json") == [Item(body, {"id": "a", "model": "gpt-4o"})]


def test_split_array_of_objects():
    items = split(b'[{"id":"a"},{"id":"b","n":1}]', "json")
    assert items == [Item(b'{"id":"a"}', {"id": "a"}), Item(b'{"id":"b","n":1}',
                                                            {"id": "b", "n": 1})]


def test_split_array_non_object_elements_keep_their_bytes_and_reason():
    items = split(b'[{"id":"a"},1,"x",[2,3],null,true]', "json")
    assert [item.raw for item in items] == [b'{"id":"a"}', b"1", b'"x"', b"[2,3]", b"null",
                                           b"true"]
    assert items[0].data == {"id": "a"} and items[0].reason is None
    for item in items[1:]:
        assert item.data is None
        assert item.reason == "event must be a JSON object"


def test_split_scalar_body_is_one_invalid_item():
    assert split(b"42", "json") == [Item(b"42", None, "event must be a JSON object")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_split_ndjson(newline):
    body = newline.join([b'{"id":"a"}', b"", b'  {"id":"b"}', b"   ", b'{"id":"c"}']) + newline
    items = split(body, "ndjson")
    assert [item.data for item in items] == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert [item.raw for item in items] == [b'{"id":"a"}', b'  {"id":"b"}', b'{"id":"c"}']


def test_split_ndjson_invalid_line_is_kept_with_its_reason():
    items = split(b'{"id":"a"}\n{"id": oops}\n[1]\n{"id":"b"}\n', "ndjson")
    assert [item.data for item in items] == [{"id": "a"}, None, None, {"id": "b"}]
    assert items[1].raw == b'{"id": oops}'
    assert items[1].reason is not None and items[1].reason.startswith("line is not valid JSON")
    assert items[2] == Item(b"[1]", None, "event must be a JSON object")


def test_split_ndjson_labelled_as_json_still_yields_its_events():
    body = b'{"id":"a"}\n{"id":"b"}\n'
    assert [item.data for item in split(body, "json")] == [{"id": "a"}, {"id": "b"}]


def test_split_single_ndjson_line_labelled_as_json_is_one_object():
    assert split(b'{"id":"a"}\n', "json") == [Item(b'{"id":"a"}\n', {"id": "a"})]


@pytest.mark.parametrize(("body", "fmt"), [
    (b"", "json"), (b"   ", "json"), (b"[]", "json"), (b" [ ] ", "json"),
    (b"", "ndjson"), (b"\n\n  \r\n", "ndjson"),
])
def test_split_empty_is_malformed(body, fmt):
    with pytest.raises(MalformedPayload):
        split(body, fmt)


@pytest.mark.parametrize("body", [b"{", b"not json", b"[{}", b'{"a":1}{"b":2}', b"\xff\xfe"])
def test_split_invalid_json_is_malformed(body):
    with pytest.raises(MalformedPayload):
        split(body, "json")


@PROPS
@given(events=st.lists(json_objects, min_size=1, max_size=8))
def test_split_array_and_ndjson_agree(events):
    lines = [orjson.dumps(e) for e in events]
    array = split(b"[" + b",".join(lines) + b"]", "json")
    ndjson = split(b"\n".join(lines) + b"\n", "ndjson")
    assert [i.data for i in array] == [i.data for i in ndjson] == events
    assert [i.raw for i in ndjson] == lines
    assert all(i.reason is None for i in array + ndjson)


# validate ------------------------------------------------------------------------------------

FULL = {
    "id": "req_1",
    "type": "holysheep_request",
    "model": "gpt-4o",
    "status_code": 200,
    "latency_ms": 120.5,
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    "cost_usd": 0.0001,
    "error": {"message": "boom"},
    "user_metadata": {"user_id": "u1", "trace_id": "t1"},
    "timestamp": 1_700_000_000_000,
}


def test_validate_known_fields_pass_through():
    assert validate(dict(FULL)) == FULL


def test_validate_keeps_unknown_fields_including_nested():
    event = {
        **FULL,
        "region": "sg",
        "extra": {"a": [1, {"b": None}]},
        "usage": {**FULL["usage"], "cached_tokens": 3, "details": {"reasoning": 2}},
        "error": {"message": "x", "code": "rate_limit", "retry_after": 2},
        "user_metadata": {"user_id": "u", "plan": "pro", "tags": ["a"]},
    }
    out = validate(orjson.loads(orjson.dumps(event)))
    assert out["region"] == "sg"
    assert out["extra"] == {"a": [1, {"b": None}]}
    assert out["usage"]["cached_tokens"] == 3
    assert out["usage"]["details"] == {"reasoning": 2}
    assert out["error"] == {"message": "x", "code": "rate_limit", "retry_after": 2}
    assert out["user_metadata"] == {"user_id": "u", "plan": "pro", "tags": ["a"]}


@PROPS
@given(extra=st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: k not in FULL), json_values, max_size=5))
def test_validate_never_drops_unknown_fields(extra):
    out = validate({**FULL, **extra})
    for key, value in extra.items():
        assert out[key] == value


def test_validate_does_not_invent_fields():
    assert validate({"id": "a"}) == {"id": "a"}
    assert validate({}) == {}


@pytest.mark.parametrize(("given_id", "expected"), [(42, "42"), (0, "0"), (-7, "-7"),
                                                    (10**20, str(10**20))])
def test_validate_integer_id_becomes_text(given_id, expected):
    assert validate({"id": given_id})["id"] == expected


def test_validate_integer_user_and_trace_become_text():
    out = validate({"user_metadata": {"user_id": 17, "trace_id": 99}})
    assert out["user_metadata"] == {"user_id": "17", "trace_id": "99"}


def test_validate_error_as_string_becomes_message_object():
    assert validate({"error": "upstream timeout"})["error"] == {"message": "upstream timeout"}


@pytest.mark.parametrize(("event", "field"), [
    ({"status_code": 600}, "status_code"),
    ({"status_code": 99}, "status_code"),
    ({"status_code": -1}, "status_code"),
    ({"status_code": "ok"}, "status_code"),
    ({"usage": {"prompt_tokens": -1}}, "usage.prompt_tokens"),
    ({"usage": {"completion_tokens": -5}}, "usage.completion_tokens"),
    ({"usage": {"total_tokens": -1}}, "usage.total_tokens"),
    ({"usage": {"prompt_tokens": MAX_COUNT + 1}}, "usage.prompt_tokens"),
    ({"usage": {"total_tokens": 10**30}}, "usage.total_tokens"),
    ({"usage": {"prompt_tokens": 1.5}}, "usage.prompt_tokens"),
    ({"latency_ms": -1}, "latency_ms"),
    ({"cost_usd": -0.01}, "cost_usd"),
    ({"id": ""}, "id"),
    ({"id": "x" * 513}, "id"),
    ({"id": True}, "id"),
    ({"id": {"nested": 1}}, "id"),
    ({"model": 5}, "model"),
    ({"usage": "lots"}, "usage"),
    ({"user_metadata": {"user_id": "u" * 513}}, "user_metadata.user_id"),
])
def test_validate_rejects_with_a_reason_naming_the_field(event, field):
    with pytest.raises(EventInvalid) as info:
        validate(event)
    assert info.value.message.startswith(field + ": ")


def test_validate_accepts_the_largest_count():
    out = validate({"usage": {"prompt_tokens": MAX_COUNT, "total_tokens": 0}})
    assert out["usage"] == {"prompt_tokens": MAX_COUNT, "total_tokens": 0}


def test_validate_keeps_timestamp_as_sent():
    for value in (1_700_000_000_000, "2023-11-14T22:13:20Z", "garbage", None, [1]):
        assert validate({"timestamp": value})["timestamp"] == value


# derived_id ----------------------------------------------------------------------------------


def _reorder(value):
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


@PROPS
@given(event=json_objects)
def test_derived_id_is_deterministic_and_key_order_independent(event):
    first = derived_id(event)
    assert first == derived_id(orjson.loads(orjson.dumps(event)))
    assert first == derived_id(_reorder(event))
    assert first.startswith("sha256-") and len(first) == len("sha256-") + 40


def test_derived_id_differs_with_content():
    assert derived_id({"a": 1}) != derived_id({"a": 2})
    assert derived_id({"a": {"b": 1, "c": 2}}) == derived_id({"a": {"c": 2, "b": 1}})
    assert derived_id({"a": [1, 2]}) != derived_id({"a": [2, 1]})


def test_split_array_elements_keep_their_exact_bytes():
    body = b'[ {"id": "a",  "n": 1.50} ,\n {"id":"b"}, 7 ]'
    assert [item.raw for item in split(body, "json")] == [b'{"id": "a",  "n": 1.50}',
                                                           b'{"id":"b"}', b"7"]


@pytest.mark.parametrize(("event", "expected"), [
    ({"status_code": "200"}, {"status_code": 200}),
    ({"latency_ms": "1.5", "cost_usd": 2}, {"latency_ms": 1.5, "cost_usd": 2.0}),
    ({"usage": {"prompt_tokens": "5", "x": 1}}, {"usage": {"prompt_tokens": 5, "x": 1}}),
])
def test_validate_numbers_sent_as_text_become_numbers(event, expected):
    assert validate(event) == expected


def test_validate_integer_id_too_long_as_text_is_refused():
    with pytest.raises(EventInvalid) as info:
        validate({"id": 10**600})
    assert info.value.message.startswith("id: ")


# The event id is the Elasticsearch `_id`: at most 512 bytes of UTF-8, whatever the characters.
@pytest.mark.parametrize("event_id", [
    "x" * 512, "é" * 256, "€" * 170 + "xx", "😀" * 128, "a" * 511 + "b",
])
def test_validate_accepts_ids_up_to_512_utf8_bytes(event_id):
    assert len(event_id.encode()) <= MAX_ID_BYTES
    assert validate({"id": event_id})["id"] == event_id


@pytest.mark.parametrize("event_id", [
    "é" * 257,            # 257 characters, 514 bytes
    "€" * 171,            # 171 characters, 513 bytes
    "😀" * 129,           # 129 characters, 516 bytes
    "x" * 511 + "é",      # 512 characters, 513 bytes
])
def test_validate_refuses_ids_over_512_utf8_bytes_even_under_512_characters(event_id):
    assert len(event_id) <= 512 < len(event_id.encode())
    with pytest.raises(EventInvalid) as info:
        validate({"id": event_id})
    assert info.value.message.startswith("id: ")
    assert f"{len(event_id.encode())}" in info.value.message


@PROPS
@given(event_id=st.text(min_size=1, max_size=600))
def test_validate_accepts_an_id_exactly_when_elasticsearch_would(event_id):
    fits = len(event_id.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES
    try:
        validate({"id": event_id})
    except EventInvalid:
        assert not fits
    else:
        assert fits


@PROPS
@given(event=json_objects, number=st.integers(min_value=-(10**511) + 1, max_value=10**512 - 1))
def test_derived_and_integer_ids_always_fit(event, number):
    assert len(derived_id(event).encode()) <= MAX_ID_BYTES
    assert len(validate({"id": number})["id"].encode()) <= MAX_ID_BYTES
