"""kibana/holysheep.ndjson imported into a real Kibana, twice: same ids, overwritten, no copies.

Where Kibana comes from:
* `INGEST_TEST_KIBANA_URL` set: that Kibana, with the optional `INGEST_TEST_KIBANA_USERNAME` /
  `_PASSWORD` / `_API_KEY` / `_CA_CERT`. The test imports the saved objects into its default
  space and afterwards deletes the ones that were not there before (ones that were are left
  overwritten with this file's version).
* Otherwise testcontainers starts Elasticsearch and Kibana 9.1.5 (security off) on a private
  Docker network and removes them at the end (Kibana takes a minute or two to start).
* Neither possible (no Docker daemon): skipped with a one-line reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from receiver import docker_reachable

from ingest.admin.kibana import import_saved_objects, saved_objects_path

pytestmark = pytest.mark.elasticsearch

VERSION = "9.1.5"  # the compose stack's ELASTIC_VERSION
ES_IMAGE = f"docker.elastic.co/elasticsearch/elasticsearch:{VERSION}"
KIBANA_IMAGE = f"docker.elastic.co/kibana/kibana:{VERSION}"
NO_KIBANA = "no Docker daemon and INGEST_TEST_KIBANA_URL not set: real Kibana import skipped"
ENV = "INGEST_TEST_KIBANA_"
STARTUP_S = 300.0


@dataclass(frozen=True)
class Kibana:
    """Where the real Kibana is and how to log in (its repr shows the URL only)."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_cert: Path | None = None

    def credentials(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "api_key": self.api_key,
                "ca_cert": self.ca_cert}

    def client(self) -> httpx.Client:
        headers = {"kbn-xsrf": "true"}
        auth = None
        if self.api_key:
            headers["authorization"] = f"ApiKey {self.api_key}"
        elif self.username:
            auth = httpx.BasicAuth(self.username, self.password or "")
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, auth=auth,
                            verify=str(self.ca_cert) if self.ca_cert else True, timeout=60)




def _wait_until_available(url: str, seconds: float) -> None:
    """Kibana answers 503 ("not ready yet") while it starts; wait for level "available"."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/api/status", timeout=10)
            last = f"HTTP {response.status_code}"
            if response.status_code == 200 and \
                    response.json().get("status", {}).get("overall", {}).get("level") == \
                    "available":
                return
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
        time.sleep(3)
    raise AssertionError(f"Kibana at {url} not available after {seconds:g}s ({last})")


@pytest.fixture(scope="module")
def kibana() -> Iterator[Kibana]:
    url = os.environ.get(ENV + "URL")
    if url:
        ca = os.environ.get(ENV + "CA_CERT")
        yield Kibana(url, os.environ.get(ENV + "USERNAME"), os.environ.get(ENV + "PASSWORD"),
                     os.environ.get(ENV + "API_KEY"), Path(ca) if ca else None)
        return
    if not docker_reachable():
        pytest.skip(NO_KIBANA)
    from docker.errors import DockerException
    from testcontainers.community.elasticsearch import ElasticSearchContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    try:
        network = Network().create()
    except DockerException:
        pytest.skip(NO_KIBANA)
    try:
        es = (ElasticSearchContainer(ES_IMAGE, mem_limit="1g")
              .with_network(network).with_network_aliases("elasticsearch")
              .with_env("ES_JAVA_OPTS", "-Xms512m -Xmx512m")
              .with_env("cluster.routing.allocation.disk.threshold_enabled", "false")
              .with_env("ingest.geoip.downloader.enabled", "false"))
        kbn = (DockerContainer(KIBANA_IMAGE, mem_limit="1536m")
               .with_network(network).with_exposed_ports(5601)
               .with_env("ELASTICSEARCH_HOSTS", "http://elasticsearch:9200")
               .with_env("NODE_OPTIONS", "--max-old-space-size=1024")
               .with_env("TELEMETRY_OPTIN", "false"))
        with es, kbn:
            host = kbn.get_container_host_ip()
            host = "127.0.0.1" if host in ("localhost", "0.0.0.0") else host
            url = f"http://{host}:{kbn.get_exposed_port(5601)}"
            _wait_until_available(url, STARTUP_S)
            yield Kibana(url)
    finally:
        network.remove()


def _objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in saved_objects_path().read_text().splitlines()]


def _find(client: httpx.Client, kind: str) -> list[dict[str, Any]]:
    response = client.get("/api/saved_objects/_find", params={"type": kind, "per_page": 10000})
    assert response.status_code == 200, response.text[:300]
    found: list[dict[str, Any]] = response.json()["saved_objects"]
    return found


@pytest.fixture
def cleanup(kibana: Kibana) -> Iterator[None]:
    """On a Kibana of the caller's, delete afterwards what the test added (not what was there)."""
    objects = _objects()
    with kibana.client() as client:
        before = {(kind, o["id"]) for kind in {o["type"] for o in objects}
                  for o in _find(client, kind)}
    yield
    with kibana.client() as client:
        for o in reversed(objects):
            if (o["type"], o["id"]) not in before:
                client.delete(f"/api/saved_objects/{o['type']}/{o['id']}")


def _import(kibana: Kibana) -> dict[str, Any]:
    coro = import_saved_objects(kibana.url, **kibana.credentials(), path=saved_objects_path(),
                                timeout=120)
    return asyncio.run(asyncio.wait_for(coro, 180))


@pytest.mark.usefixtures("cleanup")
def test_import_twice_overwrites_the_same_ids(kibana: Kibana) -> None:
    objects = _objects()
    expected = {(o["type"], o["id"]) for o in objects}

    first = _import(kibana)
    assert first["success"] is True
    assert first["successCount"] == len(objects)
    assert {(r["type"], r["id"]) for r in first["successResults"]} == expected
    assert not first.get("errors")

    second = _import(kibana)
    assert second["success"] is True
    assert second["successCount"] == len(objects)
    results = second["successResults"]
    assert {(r["type"], r["id"]) for r in results} == expected
    assert all(r.get("overwrite") is True for r in results), results
    assert not any("destinationId" in r for r in results), "an object was copied, not overwritten"

    with kibana.client() as client:
        dashboards = [o for o in _find(client, "dashboard") if o["id"] == "holysheep-overview"]
        assert len(dashboards) == 1
        [dashboard] = dashboards
        assert dashboard["attributes"]["title"] == "HolySheep: overview"
        panels = json.loads(dashboard["attributes"]["panelsJSON"])
        assert len(panels) == len(dashboard["references"])
        for kind in ("lens", "search", "index-pattern"):
            ids = [o["id"] for o in _find(client, kind)]
            for wanted in (o["id"] for o in objects if o["type"] == kind):
                assert ids.count(wanted) == 1, f"{kind}/{wanted} found {ids.count(wanted)} times"
