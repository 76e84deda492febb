"""What the files under elasticsearch/ ask of a real 9.x cluster: logsdb defaults, failure store.

Every new `logs-*-*` data stream on Elasticsearch 9 is in logsdb index mode, whose defaults differ
from a standard index (`index.mapping.ignore_malformed: true`, `index.mapping.ignore_above: 8191`).
The real-cluster suite (tests/elasticsearch) checks the outcome; these check the files, offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ingest.admin.elasticsearch import MAPPINGS, SETTINGS, TEMPLATE, assets

STREAM = "logs-holysheep.requests-default"
BODIES = assets(STREAM, "1d", "5gb", "30d")
PROPERTIES: dict[str, Any] = BODIES[MAPPINGS]["template"]["mappings"]["properties"]


def _fields(properties: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapped field and multi-field, by full path."""
    for name, spec in properties.items():
        path = prefix + name
        if "type" in spec:
            yield path, spec
        for sub, sub_spec in spec.get("fields", {}).items():
            yield f"{path}.{sub}", sub_spec
        yield from _fields(spec.get("properties", {}), f"{path}.")


def test_malformed_values_are_refused_even_in_logsdb_mode() -> None:
    # logsdb defaults index.mapping.ignore_malformed to true: "fast" in latency_ms would be
    # indexed without the field instead of refused. Only an explicit setting wins.
    index = BODIES[SETTINGS]["template"]["settings"]["index"]
    assert index["mapping"]["ignore_malformed"] is False


def test_the_one_field_that_tolerates_malformed_values_says_so_itself() -> None:
    tolerant = {path for path, spec in _fields(PROPERTIES) if spec.get("ignore_malformed")}
    assert tolerant == {"timestamp"}  # ISO strings are accepted by the receiver there


def test_every_indexed_keyword_has_its_own_ignore_above() -> None:
    # Without its own, a keyword takes the index default: 8191 characters in logsdb mode,
    # unbounded in a standard index. Ours is 1024 wherever a keyword is indexed or aggregated.
    keywords = {path: spec for path, spec in _fields(PROPERTIES) if spec["type"] == "keyword"}
    assert "error.message.keyword" in keywords and "id" in keywords
    for path, spec in keywords.items():
        searchable = spec.get("index", True) or spec.get("doc_values", True)
        if searchable:
            assert spec.get("ignore_above") == 1024, path


def test_the_raw_event_is_kept_whole_without_ignore_above() -> None:
    # Neither indexed nor in doc values: Elasticsearch returns before it looks at ignore_above
    # (KeywordFieldMapper.indexValue), so no limit applies and none is set.
    original = PROPERTIES["event"]["properties"]["original"]
    assert original == {"type": "keyword", "index": False, "doc_values": False}


def test_the_failure_store_is_off_in_the_index_template() -> None:
    # With the failure store on (9.1+; a cluster setting can turn it on for logs-*), a refused
    # document answers 201 `failure_store: used` instead of a 400. An explicit false in the
    # template wins over the cluster setting. The data stream options go under `template`.
    template = BODIES[TEMPLATE]
    assert template["template"]["data_stream_options"] == {"failure_store": {"enabled": False}}
    assert template["data_stream"] == {}  # where 8.x previews had it; now data stream options
