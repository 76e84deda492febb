"""kibana/holysheep.ndjson is consistent with itself and the mappings; ingest.kibana imports it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ingest.admin.kibana import import_saved_objects, saved_objects_path
from ingest.errors import ConfigError, RemoteRefused, RemoteUnavailable
from ingest.testing import run_bounded as run

ROOT = Path(__file__).resolve().parents[3]
NDJSON = ROOT / "kibana" / "holysheep.ndjson"
MAPPINGS = ROOT / "elasticsearch" / "component-template-mappings.json"
DATA_VIEW = "holysheep-requests"
RECORDS = "___records___"  # Lens' "count of records" pseudo field
# Kibana has no machine-readable schema for saved objects; the checks below follow the rules in
# its source (elastic/kibana), cited where they are used.
#
# Kibana refuses to import an object whose typeMigrationVersion is greater than the newest
# migration it knows for the type ("belongs to a more recent version of Kibana"):
# packages/core/saved-objects/core-saved-objects-migration-server-internal/src/
# document_migrator/pipelines/upgrade_pipeline.ts, assertCompatibility. So each version here
# must be one Kibana 8.11 (the oldest supported) has a migration for, or below: `search` 7.9.3
# is in src/plugins/saved_search/server/saved_objects/search_migrations.ts (searchMigrations);
# `dashboard` 8.7.0 and `search` 7.9.3 are what Kibana's own sample data declares from 8.8 on
# (src/plugins/home/server/services/sample_data/data_sets/logs/saved_objects.ts, with
# coreMigrationVersion 8.8.0); `lens` 8.9.0 and `index-pattern` 8.0.0 are what 8.9+ exports.
# Lens must also be past 8.6.0, whose migration turns an `indexpattern` datasource into
# `formBased` (the shape this file is written in).
BASELINE = {"index-pattern": "8.0.0", "search": "7.9.3", "lens": "8.9.0", "dashboard": "8.7.0"}
# The attributes a saved search may have at the 8.x baseline, and their shapes:
# src/plugins/saved_search/server/saved_objects/schema.ts, SCHEMA_SEARCH_V8_8_0 (the schema
# Kibana validates a created or imported `search` against; an unknown key is refused).
SEARCH_ATTRIBUTES = frozenset({
    "title", "description", "columns", "sort", "grid", "rowHeight", "rowsPerPage", "hideChart",
    "breakdownField", "kibanaSavedObjectMeta", "isTextBasedQuery", "usesAdHocDataView",
    "timeRestore", "timeRange", "refreshInterval", "viewMode", "hideAggregatedPreview", "hits",
    "version"})
# Lens operations with `canReduceTimeRange` (x-pack/platform/plugins/shared/lens/public/
# datasources/form_based/operations/definitions: count.tsx, metrics.tsx, percentile.tsx,
# last_value.tsx, cardinality.tsx) and the reduced time ranges Lens offers
# (form_based/reduced_time_range_utils.tsx, reducedTimeRangeOptions).
REDUCIBLE = frozenset({"count", "sum", "average", "min", "max", "median", "standard_deviation",
                       "percentile", "last_value", "unique_count"})
REDUCED_TIME_RANGES = frozenset({"30s", "1m", "5m", "15m", "1h"})


# --- the saved objects file -----------------------------------------------------------------

def _load() -> list[dict[str, Any]]:
    objects = []
    for number, line in enumerate(NDJSON.read_text().splitlines(), 1):
        assert line.strip(), f"line {number} is empty"
        loaded = json.loads(line)
        assert isinstance(loaded, dict), f"line {number} is not a JSON object"
        objects.append(loaded)
    return objects


OBJECTS = _load()
BY_KEY = {(o["type"], o["id"]): o for o in OBJECTS}


def _of_type(kind: str) -> list[dict[str, Any]]:
    return [o for o in OBJECTS if o["type"] == kind]


def _mapped_fields() -> set[str]:
    def walk(properties: dict[str, Any], prefix: str) -> Iterator[str]:
        for name, spec in properties.items():
            yield prefix + name
            yield from walk(spec.get("properties", {}), f"{prefix}{name}.")
            yield from (f"{prefix}{name}.{sub}" for sub in spec.get("fields", {}))

    mappings = json.loads(MAPPINGS.read_text())["template"]["mappings"]
    return set(walk(mappings["properties"], ""))


FIELDS = _mapped_fields()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _kql_fields(query: str) -> list[str]:
    """Field names in a simple KQL query (`field : value`, `field >= 400`)."""
    return re.findall(r"([A-Za-z_@][\w.@]*)\s*(?::|>=|<=|>|<)", query)


def _layers(lens: dict[str, Any]) -> dict[str, dict[str, Any]]:
    layers: dict[str, dict[str, Any]] = \
        lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
    return layers


def test_the_file_has_every_object_kind_with_unique_ids() -> None:
    assert NDJSON.read_text().endswith("\n")
    ids = [o["id"] for o in OBJECTS]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for o in OBJECTS:
        assert isinstance(o.get("type"), str) and o["type"], o
        assert isinstance(o.get("id"), str) and o["id"], o
        assert isinstance(o.get("attributes"), dict), o["id"]
        assert isinstance(o.get("references"), list), o["id"]
        assert o["attributes"].get("title"), o["id"]
    assert {o["type"] for o in OBJECTS} == {"index-pattern", "search", "lens", "dashboard"}
    assert ("index-pattern", DATA_VIEW) in BY_KEY
    assert ("dashboard", "holysheep-overview") in BY_KEY


def version_problems(o: dict[str, Any]) -> list[str]:
    """Why Kibana 8.11 would refuse (or misread) this object's migration versions."""
    found = []
    if o["coreMigrationVersion"] != "8.8.0":
        found.append(f"coreMigrationVersion {o['coreMigrationVersion']} is not the 8.x format")
    if _version(o["typeMigrationVersion"]) > _version(BASELINE[o["type"]]):
        found.append(f"{o['type']} {o['typeMigrationVersion']} is newer than what 8.11 knows "
                     f"({BASELINE[o['type']]})")
    if o["type"] == "lens" and _version(o["typeMigrationVersion"]) < (8, 6, 0):
        found.append("lens before 8.6.0 would be migrated as an indexpattern datasource")
    return found


def test_versions_stay_within_the_kibana_8_11_baseline() -> None:
    for o in OBJECTS:
        assert version_problems(o) == [], o["id"]


def test_every_reference_resolves_inside_the_file() -> None:
    for o in OBJECTS:
        for ref in o["references"]:
            assert set(ref) == {"type", "id", "name"}, (o["id"], ref)
            assert (ref["type"], ref["id"]) in BY_KEY, f"{o['id']}: unresolved {ref}"
        names = [ref["name"] for ref in o["references"]]
        assert len(names) == len(set(names)), f"{o['id']}: duplicate reference names"


def test_the_data_view() -> None:
    view = BY_KEY[("index-pattern", DATA_VIEW)]["attributes"]
    assert view["title"] == "logs-holysheep.requests-*"
    assert view["timeFieldName"] == "@timestamp"
    assert view["timeFieldName"] in FIELDS


def test_saved_searches_use_the_data_view_and_mapped_fields() -> None:
    searches = _of_type("search")
    assert len(searches) >= 4
    for search in searches:
        attrs = search["attributes"]
        source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert source["query"]["language"] == "kuery"
        ref_name = source["indexRefName"]
        assert {"type": "index-pattern", "id": DATA_VIEW, "name": ref_name} in \
            search["references"], search["id"]
        used = [*attrs["columns"], *(field for field, _ in attrs["sort"]),
                *_kql_fields(source["query"]["query"])]
        assert attrs["columns"], search["id"]
        for field in used:
            assert field in FIELDS, f"{search['id']}: {field} is not mapped"


def test_the_saved_searches_the_questions_need() -> None:
    def search(id_: str) -> tuple[dict[str, Any], str]:
        attrs = BY_KEY[("search", id_)]["attributes"]
        query = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
        return attrs, query

    errors, query = search("holysheep-errors-last-hour")
    assert errors["title"] == "HolySheep: errors (last hour)"
    assert query == "status_code >= 400"
    assert errors["columns"] == ["model", "status_code", "error.message", "user_metadata.user_id"]
    assert errors["timeRestore"] is True
    assert errors["timeRange"] == {"from": "now-1h", "to": "now"}
    slow, query = search("holysheep-slow-requests")
    assert slow["title"] == "HolySheep: slow requests"
    assert query == 'latency_bucket : "slow"'
    assert slow["sort"] == [["latency_ms", "desc"]]
    by_user, _ = search("holysheep-by-user")
    assert by_user["title"] == "HolySheep: by user"
    assert by_user["columns"] == ["user_metadata.user_id", "model", "tokens_used", "cost_usd"]
    assert by_user["sort"][0][0] == "@timestamp"
    find, _ = search("holysheep-find-request")
    assert {"id", "user_metadata.trace_id", "user_metadata.user_id", "error.message"} <= \
        set(find["columns"])


def test_every_lens_layer_references_the_data_view() -> None:
    lenses = _of_type("lens")
    assert len(lenses) >= 4
    for lens in lenses:
        assert lens["attributes"]["visualizationType"] in (
            "lnsXY", "lnsDatatable", "lnsPie", "lnsMetric"), lens["id"]
        layers = _layers(lens)
        assert layers, lens["id"]
        for layer_id in layers:
            assert {"type": "index-pattern", "id": DATA_VIEW,
                    "name": f"indexpattern-datasource-layer-{layer_id}"} in lens["references"], \
                f"{lens['id']}: layer {layer_id} has no data view reference"


def test_lens_columns_use_mapped_fields_and_hang_together() -> None:
    for lens in _of_type("lens"):
        for layer_id, layer in _layers(lens).items():
            columns = layer["columns"]
            where = f"{lens['id']}/{layer_id}"
            assert sorted(layer["columnOrder"]) == sorted(columns), where
            for column_id, column in columns.items():
                field = column.get("sourceField")
                if field is not None:
                    assert field == RECORDS or field in FIELDS, f"{where}: {field} is not mapped"
                if field == RECORDS:
                    assert column["operationType"] == "count", where
                for ref in column.get("references", []):
                    assert ref in columns, f"{where}: {column_id} references {ref}"
                order = column.get("params", {}).get("orderBy", {})
                if order.get("type") == "column":
                    assert order["columnId"] in columns, f"{where}: {column_id} orders by nothing"
                query = column.get("filter", {}).get("query", "")
                for name in _kql_fields(query):
                    assert name in FIELDS, f"{where}: filter field {name} is not mapped"
            if lens["attributes"]["visualizationType"] == "lnsXY":
                assert any(c["operationType"] == "date_histogram"
                           and c["sourceField"] == "@timestamp" for c in columns.values()), where


def _accessors(visualization: dict[str, Any], kind: str) -> dict[str, list[str]]:
    """Column ids the visualization shows, per layer id."""
    if kind == "lnsDatatable":
        return {visualization["layerId"]: [c["columnId"] for c in visualization["columns"]]}
    if kind == "lnsMetric":
        return {visualization["layerId"]: [visualization.get("metricAccessor")
                                           or visualization["accessor"]]}
    found: dict[str, list[str]] = {}
    for layer in visualization["layers"]:
        ids = [*layer.get("accessors", []), *layer.get("primaryGroups", []),
               *layer.get("metrics", [])]
        ids += [layer[key] for key in ("xAccessor", "splitAccessor") if layer.get(key)]
        found[layer["layerId"]] = ids
    return found


def test_lens_visualizations_show_existing_columns() -> None:
    for lens in _of_type("lens"):
        attrs = lens["attributes"]
        layers = _layers(lens)
        shown = _accessors(attrs["state"]["visualization"], attrs["visualizationType"])
        assert set(shown) == set(layers), lens["id"]
        for layer_id, ids in shown.items():
            assert ids, lens["id"]
            for column_id in ids:
                assert column_id in layers[layer_id]["columns"], f"{lens['id']}: {column_id}"
        sorting = attrs["state"]["visualization"].get("sorting")
        if sorting:
            assert any(sorting["columnId"] in layer["columns"] for layer in layers.values())


def test_the_lens_visualizations_the_questions_need() -> None:
    def operations(id_: str) -> list[tuple[str, Any, Any]]:
        return [(c["operationType"], c.get("sourceField"), c.get("params", {}).get("percentile"))
                for layer in _layers(BY_KEY[("lens", id_)]).values()
                for c in layer["columns"].values()]

    over_time = operations("holysheep-latency-percentiles")
    assert {("percentile", "latency_ms", p) for p in (50, 90, 95, 99)} <= set(over_time)
    per_model = operations("holysheep-latency-by-model")
    assert {("percentile", "latency_ms", p) for p in (50, 95, 99)} <= set(per_model)
    assert ("terms", "model", None) in per_model
    assert ("terms", "latency_bucket", None) in operations("holysheep-latency-buckets")
    errors = _layers(BY_KEY[("lens", "holysheep-error-rate-by-model")])["errors"]["columns"]
    assert errors["errors"]["filter"]["query"] == "status_code >= 400"
    assert errors["rate"]["operationType"] == "formula"
    assert all(c.get("reducedTimeRange") == "1h" for c in errors.values()
               if c["operationType"] == "count")
    daily = operations("holysheep-cost-tokens-per-day")
    assert {("sum", "cost_usd", None), ("sum", "computed_cost_usd", None),
            ("sum", "tokens_used", None)} <= set(daily)
    days = [c for layer in _layers(BY_KEY[("lens", "holysheep-cost-tokens-per-day")]).values()
            for c in layer["columns"].values() if c["operationType"] == "date_histogram"]
    assert days[0]["params"]["interval"] == "d"
    assert ("terms", "model", None) in operations("holysheep-cost-per-model-per-day")


def test_the_dashboard_panels_resolve() -> None:
    dashboard = BY_KEY[("dashboard", "holysheep-overview")]
    attrs = dashboard["attributes"]
    panels = json.loads(attrs["panelsJSON"])
    json.loads(attrs["optionsJSON"])
    json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
    refs = {ref["name"]: ref for ref in dashboard["references"]}
    shown = set()
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        index, ref_name = panel["panelIndex"], panel["panelRefName"]
        # Kibana 8.x stores a panel's reference as "<panelIndex>:<panelRefName>" and still
        # resolves the older bare "<panelRefName>".
        ref = refs.get(f"{index}:{ref_name}") or refs.get(ref_name)
        assert ref is not None, f"panel {index}: no reference named {ref_name}"
        assert ref["type"] == panel["type"], index
        shown.add((ref["type"], ref["id"]))
        grid = panel["gridData"]
        assert grid["i"] == index
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 48, index
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {index} overlaps another"
        cells |= area
    assert len({p["panelIndex"] for p in panels}) == len(panels)
    assert {("lens", o["id"]) for o in _of_type("lens")} <= shown, "a visualization is left out"
    assert ("search", "holysheep-find-request") in shown
    assert attrs["timeRestore"] is True


def _panel_objects() -> list[dict[str, Any]]:
    dashboard = BY_KEY[("dashboard", "holysheep-overview")]
    refs = {ref["name"]: ref for ref in dashboard["references"]}
    found = []
    for panel in json.loads(dashboard["attributes"]["panelsJSON"]):
        ref = refs.get(f"{panel['panelIndex']}:{panel['panelRefName']}") or \
            refs[panel["panelRefName"]]
        found.append(BY_KEY[(ref["type"], ref["id"])])
    return found


def test_what_the_dashboard_calls_last_hour_is_the_last_hour() -> None:
    # An embedded saved search follows the dashboard's time range (7 days here), whatever its
    # own timeRestore says; only a Lens column's reducedTimeRange narrows it to the last hour.
    last_hour = [o for o in _panel_objects() if "last hour" in o["attributes"]["title"]]
    assert {o["id"] for o in last_hour} == {"holysheep-error-rate-by-model",
                                            "holysheep-errors-last-hour-table"}
    for lens in last_hour:
        assert lens["type"] == "lens", f"{lens['id']} shows the dashboard's range, not an hour"
        for layer in _layers(lens).values():
            metrics = [c for c in layer["columns"].values() if not c["isBucketed"]
                       and c["operationType"] not in ("formula", "math")]
            assert metrics, lens["id"]
            assert all(c.get("reducedTimeRange") == "1h" for c in metrics), lens["id"]


def test_the_errors_of_the_last_hour_by_message_and_model() -> None:
    columns = _layers(BY_KEY[("lens", "holysheep-errors-last-hour-table")])["recent-errors"][
        "columns"]
    assert [c["sourceField"] for c in columns.values() if c["operationType"] == "terms"] == [
        "error.message.keyword", "model"]
    assert columns["errors"]["filter"]["query"] == "status_code >= 400"
    assert columns["last"] == {**columns["last"], "operationType": "max",
                               "sourceField": "@timestamp", "dataType": "date"}
    assert columns["last"]["filter"] == columns["errors"]["filter"]


def search_problems(search: dict[str, Any]) -> list[str]:
    """What Kibana's saved search schema (SCHEMA_SEARCH_V8_8_0) would refuse in `search`."""
    attrs = search["attributes"]
    found = [f"unknown attribute {key}" for key in attrs if key not in SEARCH_ATTRIBUTES]
    if not isinstance(attrs.get("title"), str):
        found.append("title must be a string")
    meta = attrs.get("kibanaSavedObjectMeta")
    if not (isinstance(meta, dict) and set(meta) == {"searchSourceJSON"}
            and isinstance(meta["searchSourceJSON"], str)):
        found.append("kibanaSavedObjectMeta must be {searchSourceJSON: string}")
    if not all(isinstance(c, str) for c in attrs.get("columns", [])):
        found.append("columns must be strings")
    sort = attrs.get("sort", [])
    pairs = sort if sort and isinstance(sort[0], list) else [sort]
    if not all(isinstance(p, list) and len(p) <= 2 and all(isinstance(x, str) for x in p)
               for p in pairs):
        found.append("sort must be [field, direction] pairs")
    if "grid" in attrs and not (isinstance(attrs["grid"], dict) and set(attrs["grid"]) <= {
            "columns"}):
        found.append("grid may only hold columns")
    for key, shape in (("timeRange", {"from": str, "to": str}),
                       ("refreshInterval", {"pause": bool, "value": int})):
        if key in attrs:
            value = attrs[key]
            if not (isinstance(value, dict) and set(value) == set(shape)
                    and all(isinstance(value[k], t) for k, t in shape.items())):
                found.append(f"{key} must be {{{', '.join(shape)}}}")
    for key in ("hideChart", "isTextBasedQuery", "timeRestore", "usesAdHocDataView"):
        if key in attrs and not isinstance(attrs[key], bool):
            found.append(f"{key} must be a boolean")
    return found


def reduced_time_range_problems(lens: dict[str, Any]) -> list[str]:
    """Where a Lens column's reducedTimeRange breaks the rules Lens checks it against."""
    view = BY_KEY[("index-pattern", DATA_VIEW)]["attributes"]
    found = []
    for layer_id, layer in _layers(lens).items():
        columns = layer["columns"]
        histogram = any(c["operationType"] == "date_histogram" for c in columns.values())
        for column_id, column in columns.items():
            value = column.get("reducedTimeRange")
            if value is None:
                continue
            where = f"{layer_id}/{column_id}"
            if column["operationType"] not in REDUCIBLE:
                found.append(f"{where}: {column['operationType']} cannot reduce the time range")
            if histogram:
                found.append(f"{where}: not with a date histogram in the layer")
            if not view.get("timeFieldName"):
                found.append(f"{where}: the data view has no time field")
            if value not in REDUCED_TIME_RANGES:
                found.append(f"{where}: {value!r} is not one of Lens' reduced time ranges")
    return found


def test_saved_searches_have_only_what_kibanas_schema_allows() -> None:
    for search in _of_type("search"):
        assert search_problems(search) == [], search["id"]


def test_a_saved_search_attribute_kibana_does_not_know_is_caught() -> None:
    search = json.loads(json.dumps(BY_KEY[("search", "holysheep-errors-last-hour")]))
    search["attributes"]["timeRestor"] = search["attributes"].pop("timeRestore")
    search["attributes"]["refreshInterval"]["value"] = "60s"
    assert search_problems(search) == ["unknown attribute timeRestor",
                                       "refreshInterval must be {pause, value}"]


def test_reduced_time_ranges_are_where_lens_allows_them() -> None:
    reduced = 0
    for lens in _of_type("lens"):
        assert reduced_time_range_problems(lens) == [], lens["id"]
        reduced += sum("reducedTimeRange" in c for layer in _layers(lens).values()
                       for c in layer["columns"].values())
    assert reduced >= 6


def test_a_reduced_time_range_beside_a_date_histogram_is_caught() -> None:
    lens = json.loads(json.dumps(BY_KEY[("lens", "holysheep-latency-percentiles")]))
    _layers(lens)["latency"]["columns"]["p50"]["reducedTimeRange"] = "2h"
    assert reduced_time_range_problems(lens) == [
        "latency/p50: not with a date histogram in the layer",
        "latency/p50: '2h' is not one of Lens' reduced time ranges"]


def test_a_type_migration_version_past_the_baseline_is_caught() -> None:
    newer = {**BY_KEY[("lens", "holysheep-cost-by-user")], "typeMigrationVersion": "8.12.0"}
    assert version_problems(newer) == ["lens 8.12.0 is newer than what 8.11 knows (8.9.0)"]
    search = {**BY_KEY[("search", "holysheep-by-user")], "typeMigrationVersion": "8.0.0"}
    assert version_problems(search) == ["search 8.0.0 is newer than what 8.11 knows (7.9.3)"]


# --- import_saved_objects -------------------------------------------------------------------

SUCCESS = {"success": True, "successCount": len(OBJECTS), "errors": [],
           "successResults": [{"type": o["type"], "id": o["id"], "meta": {}} for o in OBJECTS]}



def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def _answer(status: int, body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body)


def test_saved_objects_path_finds_the_file_in_the_source_tree() -> None:
    assert saved_objects_path() == NDJSON


def test_import_posts_the_file_as_multipart_with_overwrite() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUCCESS)

    result = run(import_saved_objects("http://127.0.0.1:5601/", username="elastic",
                                      password="s3cret-pw", api_key=None, ca_cert=None,
                                      path=NDJSON, transport=_mock(record)))
    assert result == SUCCESS
    [sent] = seen
    request = {"path": sent.url.raw_path.decode(), "headers": dict(sent.headers.items()),
               "body": sent.read()}
    target = urlsplit(request["path"])
    assert target.path == "/api/saved_objects/_import"
    assert parse_qs(target.query) == {"overwrite": ["true"]}
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["kbn-xsrf"] == "true"
    assert headers["authorization"].startswith("Basic ")
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        b"content-type: " + headers["content-type"].encode() + b"\r\n\r\n" + request["body"])
    [part] = list(message.iter_parts())
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_filename() == "holysheep.ndjson"
    assert part.get_payload(decode=True) == NDJSON.read_bytes()


def test_import_sends_an_api_key_instead_of_basic_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUCCESS)

    run(import_saved_objects("https://kibana.example:5601", username="elastic", password="pw",
                             api_key="a2V5OnNlY3JldA==", ca_cert=None, path=NDJSON,
                             transport=_mock(handler)))
    assert seen[0].headers["authorization"] == "ApiKey a2V5OnNlY3JldA=="
    assert seen[0].url.path == "/api/saved_objects/_import"


def test_not_authorised_is_refused_without_the_password() -> None:
    answer = _answer(401, {"statusCode": 401, "error": "Unauthorized",
                           "message": "unable to authenticate user [elastic]"})
    with pytest.raises(RemoteRefused) as caught:
        run(import_saved_objects("http://elastic:url-secret-1@127.0.0.1:5601",
                                 username="elastic", password="hunter2-secret", api_key=None,
                                 ca_cert=None, path=NDJSON, transport=_mock(answer)))
    assert caught.value.status == 401
    message = caught.value.message
    assert "401" in message and "INGEST_KIBANA" in message
    assert "hunter2-secret" not in message and "url-secret-1" not in message
    assert "***@127.0.0.1:5601" in message


def test_a_secret_echoed_by_kibana_is_masked() -> None:
    answer = _answer(403, {"message": "key ApiKey-Sekrit-123 lacks privileges"})
    with pytest.raises(RemoteRefused) as caught:
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key="ApiKey-Sekrit-123", ca_cert=None, path=NDJSON,
                                 transport=_mock(answer)))
    assert "ApiKey-Sekrit-123" not in caught.value.message
    assert caught.value.status == 403


def test_an_unsuccessful_import_names_the_failing_objects() -> None:
    answer = _answer(200, {
        "success": False, "successCount": 12,
        "errors": [
            {"id": "holysheep-overview", "type": "dashboard", "title": "HolySheep: overview",
             "error": {"type": "missing_references",
                       "references": [{"type": "lens", "id": "holysheep-gone"}]}},
            {"id": "holysheep-by-user", "type": "search", "error": {"type": "unknown",
                                                                    "message": "boom"}},
        ]})
    with pytest.raises(RemoteRefused) as caught:
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=None, path=NDJSON, transport=_mock(answer)))
    message = caught.value.message
    assert "dashboard/holysheep-overview (missing_references: missing lens/holysheep-gone)" \
        in message
    assert "search/holysheep-by-user (unknown: boom)" in message
    assert "2 failed, 12 imported" in message


def test_a_timeout_is_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(RemoteUnavailable, match="timed out"):
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=None, path=NDJSON, timeout=2,
                                 transport=_mock(handler)))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_a_starting_or_overloaded_kibana_is_unavailable(status: int) -> None:
    answer = _answer(status, {"message": "Kibana server is not ready yet"})
    with pytest.raises(RemoteUnavailable) as caught:
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=None, path=NDJSON, transport=_mock(answer)))
    assert caught.value.status == status
    assert "not ready yet" in caught.value.message


@pytest.mark.parametrize("status", [400, 404, 413, 501])
def test_other_statuses_are_refused(status: int) -> None:
    answer = _answer(status, {"message": f"status {status}"})
    with pytest.raises(RemoteRefused) as caught:
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=None, path=NDJSON, transport=_mock(answer)))
    assert caught.value.status == status


def test_an_answer_that_is_not_an_import_result_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>not Kibana</html>")

    with pytest.raises(RemoteRefused, match="is this URL Kibana"):
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=None, path=NDJSON,
                                 transport=_mock(handler)))


@pytest.mark.parametrize("url", ["localhost:5601", "ftp://kibana", "http://:5601",
                                 "http://kibana:notaport"])
def test_an_unusable_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        run(import_saved_objects(url, username=None, password=None, api_key=None,
                                 ca_cert=None, path=NDJSON))


def test_a_missing_file_or_ca_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        run(import_saved_objects("http://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=None, path=tmp_path / "none.ndjson"))
    with pytest.raises(ConfigError, match="CA certificate"):
        run(import_saved_objects("https://127.0.0.1:5601", username=None, password=None,
                                 api_key=None, ca_cert=tmp_path / "ca.pem", path=NDJSON))
