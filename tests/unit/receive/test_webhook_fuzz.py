"""Fuzzing the whole receiver app in process: any correctly signed body gets a 4xx or is stored.

Bounded by example count (about a minute on a 2-core machine). A failure prints hypothesis'
`@reproduce_failure` blob; the seed is fixed (`INGEST_FUZZ_SEED` picks another) so a CI run
replays exactly where it was found, and `INGEST_FUZZ_EXAMPLES` runs more or fewer cases.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ingest.app import WEBHOOK_PATH, create_app
from ingest.metrics import Metrics
from ingest.receive.prices import PriceBook, Rate
from ingest.receive.signing import signed_headers
from ingest.settings import Settings
from ingest.store import Reader

SECRET = "fuzz-secret-0123456789"
EXAMPLES = int(os.environ.get("INGEST_FUZZ_EXAMPLES", "2500"))
SEED = int(os.environ.get("INGEST_FUZZ_SEED", "16"))
MAX_BODY = 256 << 10

CONTENT_TYPES = [
    None, "", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "text/json", "application/vnd.relay+json", "application/x-ndjson", "application/ndjson",
    "application/jsonl", "application/x-jsonlines", "text/plain", "application/xml",
    "multipart/form-data; boundary=x", ";", "application/json;;;", "\u00e9/\u00e9",
]
KNOWN = ["id", "type", "model", "status_code", "latency_ms", "response_time_ms", "usage",
         "cost_usd", "error", "user_metadata", "timestamp", "tags", "event", "@timestamp",
         "prompt_tokens", "completion_tokens", "total_tokens", "message", "user_id", "trace_id"]

# Values of every JSON type, shaped like events often enough to reach enrichment and the store.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["gpt-4o", "claude-sonnet-4", "", "inf", "NaN", "-1", "200", "1e400",
                     "2026-12-03T10:00:00Z", "\u0000", "\ud7ff\ue000"]),
)
keys = st.one_of(st.sampled_from(KNOWN), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(keys, inner, max_size=6)),
    max_leaves=25,
)
events = st.one_of(
    st.dictionaries(keys, values, max_size=10),
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(min_size=1, max_size=600), st.integers()),
         "model": st.sampled_from(["gpt-4o", "mystery", "x" * 200]),
         "status_code": st.integers(min_value=-5, max_value=700),
         "latency_ms": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text()),
         "usage": st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens",
                                                   "total_tokens"]),
                                  st.one_of(st.integers(), st.floats(), st.text(max_size=5)))},
        optional={"timestamp": st.one_of(st.integers(), st.floats(), st.text(max_size=30)),
                  "error": values, "user_metadata": values, "tags": values}),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Valid JSON shapes, then byte-level mutations of them, or hostile bodies outright."""
    kind = draw(st.sampled_from(["one", "array", "ndjson", "hostile"]))
    if kind == "hostile":
        depth = draw(st.integers(min_value=1, max_value=6000))
        return draw(st.sampled_from([
            b"[" * depth, b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
            b'[{"id":"x","n":' + b"[" * depth + b"]" * depth + b"}]",
            b'{"id":"x","big":' + b"9" * depth + b"}", b'{"id":"x","latency_ms":NaN}',
            b'{"id":"x","v":Infinity}', b'{"id":"x","v":-Infinity}',
            b'{"id":"\\ud800"}', b'[{"id":"\\udc00"},{"id":"ok"}]', b'{"id":"a","id":"b"}',
            b"\xef\xbb\xbf" + b'{"id":"bom"}', b'{"id":"\xff\xfe\xc3"}', b"\x00" * depth,
            b'{"id":"' + b"s" * depth * 40 + b'"}',
        ]))
    docs = draw(st.lists(events, min_size=1, max_size=8))
    # The standard library writes what orjson would refuse: integers past 64 bits, and lone
    # surrogates either escaped or (without ensure_ascii) as invalid UTF-8 bytes.
    ascii_only = draw(st.booleans())

    def dump(value: object) -> bytes:
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")

    if kind == "one":
        raw = dump(docs[0])
    elif kind == "array":
        raw = dump(docs)
    else:
        raw = b"\n".join(dump(d) for d in docs)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        raw = draw(mutation(raw))
    return raw


def mutation(raw: bytes) -> st.SearchStrategy[bytes]:
    at = st.integers(min_value=0, max_value=len(raw))
    junk = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"\x00", b"NaN",
                            b"Infinity", b"1e999", b"9" * 400, b"[" * 1500, b"]", b"}", b",",
                            b'"', b"\\", b"\n", b"\xef\xbb\xbf", b'"id":"dup",'])
    return st.one_of(
        st.tuples(at, junk).map(lambda t: raw[:t[0]] + t[1] + raw[t[0]:]),   # insert
        st.tuples(at, at).map(lambda t: raw[:min(t)] + raw[max(t):]),         # cut
        at.map(lambda n: raw[:n]),                                            # truncate
        st.binary(max_size=64).map(lambda b: raw + b),                        # append
    )


@dataclass
class Case:
    body: bytes
    content_type: str | None
    gzip: str  # "no", "wire" (signed over compressed bytes) or "inner" (over the JSON)


content_types = st.one_of(st.sampled_from([None, "application/json", "application/x-ndjson"]),
                          st.sampled_from(CONTENT_TYPES))
cases = st.builds(Case, bodies(), content_types,
                  st.sampled_from(["no", "no", "wire", "inner"]))


class Receiver:
    """The real app over a real store on a loop of its own; each case posted and checked."""

    def __init__(self, data_dir: Path) -> None:
        settings = Settings(webhook_secret=SECRET, data_dir=data_dir, store_sync="normal",
                            max_body_bytes=MAX_BODY, min_free_disk_bytes=0)
        prices = PriceBook({"gpt-4o": Rate(2.5, 10.0, "override")}, lookup=None)
        self.metrics = Metrics()
        self.app = create_app(settings, metrics=self.metrics, prices=prices)
        self.data_dir = data_dir
        self.runner = asyncio.Runner()
        self.statuses: dict[int, int] = {}

    def __enter__(self) -> Receiver:
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.runner.run(self.lifespan.__aenter__())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                        base_url="http://receiver.test")
        self.reader = Reader(self.data_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.runner.run(self.client.aclose())
        self.runner.run(self.lifespan.__aexit__(None, None, None))
        self.runner.close()

    def check(self, case: Case) -> None:
        body = case.body
        wire = gzip.compress(body, mtime=0) if case.gzip != "no" else body
        headers: dict[str, str | bytes] = dict(signed_headers(
            SECRET, body if case.gzip == "inner" else wire, int(time.time())))
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type.encode("latin-1")
        if case.gzip != "no":
            headers["Content-Encoding"] = "gzip"
        before = self.reader.counts()
        # Raises if anything escapes the app: that fails the case as well.
        response = self.runner.run(self.client.post(WEBHOOK_PATH, content=wire,
                                                    headers=headers))
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        answer = response.json()
        after = self.reader.counts()
        stored = sum(after[s] - before[s] for s in ("pending", "shipped", "dead"))
        if response.status_code in (202, 422):
            assert stored == answer["accepted"]
            # Identical bytes are quarantined once, so at most as many new quarantine rows.
            assert 0 <= after["quarantined"] - before["quarantined"] <= answer["quarantined"]
            assert answer["quarantined"] >= len(answer.get("errors", []))
            if response.status_code == 422:
                assert answer["accepted"] == answer["duplicates"] == 0
        else:
            assert stored == 0
            assert answer["error"] in {"malformed_payload", "payload_too_large",
                                       "unsupported_media_type"}, answer


def test_no_signed_body_gets_a_5xx_and_every_2xx_is_stored(tmp_path: Path) -> None:
    with Receiver(tmp_path / "data") as receiver:

        @seed(SEED)
        @settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(cases)
        def post(case: Case) -> None:
            receiver.check(case)

        post()
        sent = sum(receiver.statuses.values())
        print(f"fuzz: {sent} cases, statuses {sorted(receiver.statuses.items())}")
        assert sent >= EXAMPLES // 2  # hypothesis ran the cases, not a handful
        assert not [s for s in receiver.statuses if s >= 500]
        assert receiver.metrics.registry.get_sample_value(
            "ingest_webhooks_total", {"outcome": "error", "reason": "internal_error"}) is None
