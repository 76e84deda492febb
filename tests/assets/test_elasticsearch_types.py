"""Every Elasticsearch request body we have, type-checked against the official API types.

No Elasticsearch runs here. The official JavaScript client (`@elastic/elasticsearch`, the same
major as the cluster and the Python client) ships `lib/api/types.d.ts`, generated from
elastic/elasticsearch-specification. Each body is assigned to its request type in a generated
`.ts` file and `tsc --noEmit --strict` must accept it: the files under elasticsearch/ (policy,
templates, every query), the bodies `holysheep-ingest setup` sends (recorded on the wire), the
report and search bodies `ingest.reports` builds, and the bulk action lines `ingest.bulk` writes.
Typos planted into copies must be refused, so the check is known to bite.

What the types cannot see: index settings are an open map in the specification
(`IndicesIndexSettings` ends in `[property: string]: any`), so a misspelt setting name passes.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from setup_recorder import Request, recorder
from spec_tools import Diagnostic, literal, module, typecheck, version

from ingest import records
from ingest.admin.elasticsearch import setup
from ingest.answers import catalogue, reports
from ingest.answers import elasticsearch as es_answers
from ingest.elastic import CLIENT_MAJOR, Connection
from ingest.records import Pending
from ingest.ship import bulk
from ingest.ship.elasticsearch import ElasticsearchSink

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "elasticsearch"
PACKAGE = "@elastic/elasticsearch"
STREAM = "logs-holysheep.requests-default"
WINDOW = (1_700_000_000_000, 1_700_086_400_000)


@dataclass(frozen=True)
class Body:
    """One request as the client API takes it: path parameters and body fields together."""

    label: str
    type: str
    value: dict[str, Any]


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def file_bodies() -> list[Body]:
    found = [
        Body("ilm-policy.json", "IlmPutLifecycleRequest",
             {"name": "holysheep-requests", **_load(ASSETS / "ilm-policy.json")}),
        Body("index-template.json", "IndicesPutIndexTemplateRequest",
             {"name": "holysheep-requests", **_load(ASSETS / "index-template.json")}),
    ]
    for path in sorted(ASSETS.glob("component-template-*.json")):
        found.append(Body(path.name, "ClusterPutComponentTemplateRequest",
                          {"name": path.stem, **_load(path)}))
    queries = sorted((ASSETS / "queries").glob("*.json"))
    assert queries, "no queries"
    found += [Body(f"queries/{path.name}", "SearchRequest", _load(path)) for path in queries]
    return found


# The PUTs `setup` sends, by path prefix: the request type and its path parameter.
SETUP_TYPES = {
    "/_ilm/policy/": "IlmPutLifecycleRequest",
    "/_component_template/": "ClusterPutComponentTemplateRequest",
    "/_index_template/": "IndicesPutIndexTemplateRequest",
    "/_data_stream/": "IndicesCreateDataStreamRequest",
}


def setup_requests() -> list[Request]:
    async def run(url: str) -> None:
        sink = ElasticsearchSink(Connection(url, timeout_s=10))
        try:
            await setup(sink.cluster, STREAM, "1d", "5gb", "30d")
        finally:
            await sink.close()

    with recorder() as (url, seen):
        asyncio.run(asyncio.wait_for(run(url), 60))
        return [r for r in seen if r.method == "PUT"]


def setup_bodies() -> list[Body]:
    found = []
    for request in setup_requests():
        prefix = next((p for p in SETUP_TYPES if request.path.startswith(p)), None)
        assert prefix is not None, f"setup sent an unexpected PUT {request.path}"
        name = request.path[len(prefix):].split("?")[0]
        found.append(Body(f"setup PUT {request.path}", SETUP_TYPES[prefix],
                          {"name": name, **(request.body or {})}))
    return found


def report_bodies() -> list[Body]:
    found = []
    for model, user in ((None, None), ("gpt-4o", "user_001")):
        window = records.Query(*WINDOW, model=model, user=user)
        for question in reports.DEFAULT_SINCE:
            for by in ("day", "model", "user") if question == "cost" else ("day",):
                found.append(Body(f"answers.es_body({question!r}, by={by!r}, model={model!r})",
                                  "SearchRequest", es_answers.es_body(question, window, by)))
    for args in ((None, None, None, None, 20), ("req_1", "user_001", "trace-7", "timeout", 5)):
        found.append(Body(f"answers.search_body{args}", "SearchRequest",
                          es_answers.search_body(*args)))
    every = catalogue.Search("req_1", "user_001", "trace-7", "timeout", "gpt-4o", "5xx",
                             WINDOW[0], WINDOW[1], 5)
    found.append(Body(f"catalogue.{every}.body()", "SearchRequest", every.body()))
    return found


def bulk_bodies() -> list[Body]:
    item = Pending(1, "req_1", orjson.dumps({"id": "req_1", "model": "gpt-4o"}), b'{"id":"req_1"}')
    meta, _source, _ = bulk.action(item, STREAM).split(b"\n")
    return [Body("ingest.bulk.action (the action line)", "BulkOperationContainer",
                 orjson.loads(meta))]


def source(bodies: list[Body]) -> tuple[str, dict[int, str]]:
    """The TypeScript file, and which body each line belongs to."""
    types = module(PACKAGE, "lib/api/types")
    lines = [f'import type * as estypes from "{types}";', ""]
    owner: dict[int, str] = {}
    for number, body in enumerate(bodies):
        first = len(lines) + 1
        lines.append(f"// {body.label}")
        lines += f"export const body{number}: estypes.{body.type} = {literal(body.value)};"\
            .splitlines()
        owner.update(dict.fromkeys(range(first, len(lines) + 1), body.label))
        lines.append("")
    return "\n".join(lines) + "\n", owner


# -- planted typos, each in a copy of one body ---------------------------------------------

def _rename(path: list[str], old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def plant(body: dict[str, Any]) -> None:
        at = body
        for key in path:
            at = at[key]
        at[new] = at.pop(old)
    return plant


def _set(path: list[str], value: Any) -> Callable[[dict[str, Any]], None]:
    def plant(body: dict[str, Any]) -> None:
        at = body
        for key in path[:-1]:
            at = at[key]
        assert path[-1] in at
        at[path[-1]] = value
    return plant


PLANTED = {
    "percent": ("queries/latency.json",
                _rename(["aggs", "overall", "percentiles"], "percents", "percent")),
    '"daily"': ("queries/cost.json",
                _set(["aggs", "days", "date_histogram", "calendar_interval"], "daily")),
    "hott": ("ilm-policy.json", _rename(["policy", "phases"], "hot", "hott")),
    '"keywrd"': ("component-template-mappings.json",
                 _set(["template", "mappings", "properties", "model", "type"], "keywrd")),
}


@dataclass
class Checked:
    bodies: list[Body]
    owner: dict[int, str]
    diagnostics: dict[str, list[Diagnostic]]


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Checked:
    bodies = [*file_bodies(), *setup_bodies(), *report_bodies(), *bulk_bodies()]
    files: dict[str, str] = {}
    files["ours.ts"], owner = source(bodies)
    by_label = {b.label: b for b in bodies}
    for number, (label, plant) in enumerate(PLANTED.values()):
        planted = copy.deepcopy(by_label[label])
        plant(planted.value)
        files[f"planted{number}.ts"] = source([planted])[0]
    found = typecheck(files, tmp_path_factory.mktemp("es-types"))
    diagnostics: dict[str, list[Diagnostic]] = {name: [] for name in files}
    for diagnostic in found:
        diagnostics[diagnostic.file].append(diagnostic)
    return Checked(bodies, owner, diagnostics)


def test_the_types_are_of_our_major() -> None:
    assert int(version(PACKAGE).split(".")[0]) == CLIENT_MAJOR


def test_every_body_is_one_the_api_types_allow(checked: Checked) -> None:
    problems = [f"{checked.owner.get(d.line, '?')}: {d}" for d in checked.diagnostics["ours.ts"]]
    assert problems == [], "\n".join(problems)
    labels = [b.label for b in checked.bodies]
    # The policy, three templates and the data stream.
    assert sum(label.startswith("setup PUT") for label in labels) == 5
    assert sum(label.startswith("queries/") for label in labels) >= 3
    assert sum(label.startswith("answers.") for label in labels) >= 8


@pytest.mark.parametrize("token", list(PLANTED))
def test_a_planted_typo_is_refused(checked: Checked, token: str) -> None:
    number = list(PLANTED).index(token)
    found = checked.diagnostics[f"planted{number}.ts"]
    assert found, f"tsc accepted {PLANTED[token][0]} with {token} planted"
    assert any(token in d.message for d in found), [str(d) for d in found]


def test_setup_sends_the_failure_store_off_and_malformed_values_refused() -> None:
    sent = {r.path.split("?")[0]: r.body for r in setup_requests()}
    template = sent["/_index_template/holysheep-requests"]
    assert template["template"]["data_stream_options"] == {"failure_store": {"enabled": False}}
    settings = sent["/_component_template/holysheep-requests-settings"]
    assert settings["template"]["settings"]["index"]["mapping"] == {"ignore_malformed": False}
