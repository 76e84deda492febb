"""The real-cluster suite's Elasticsearch: INGEST_TEST_ELASTICSEARCH_URL, else a testcontainer.

* `INGEST_TEST_ELASTICSEARCH_URL` set: that cluster is used, with the optional
  `INGEST_TEST_ELASTICSEARCH_USERNAME` / `_PASSWORD` / `_API_KEY` / `_CA_CERT`. Point it at a
  scratch cluster: the tests install the holysheep-requests ILM policy and templates (restoring
  or removing them at the end) and create and delete their own `logs-holysheep.requests-t<hex>`
  data streams.
* Otherwise testcontainers starts `docker.elastic.co/elasticsearch/elasticsearch:9.1.5`
  (single node, security off, 1 GB) and removes it at the end.
* Neither possible (no Docker daemon): every test is skipped with a one-line reason.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from receiver import docker_reachable

from ingest.admin.elasticsearch import MAPPINGS, POLICY, SETTINGS, TEMPLATE
from ingest.elastic import Connection
from ingest.ship.elasticsearch import ElasticsearchSink

IMAGE = "docker.elastic.co/elasticsearch/elasticsearch:9.1.5"
NO_CLUSTER = ("no Docker daemon and INGEST_TEST_ELASTICSEARCH_URL not set: "
              "real-cluster suite skipped")
ENV = "INGEST_TEST_ELASTICSEARCH_"
T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """Where the real cluster is and how to log in (its repr shows the URL only)."""

    url: str
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    ca_cert: Path | None = None
    # Created by this suite at 9.x: new logs-*-* data streams are in logsdb index mode. A
    # cluster given by URL may have been upgraded from 8.x, where that default does not apply.
    fresh: bool = False

    def __repr__(self) -> str:
        return f"Cluster({self.url!r})"

    def connection(self, timeout_s: float = 30.0) -> Connection:
        return Connection(self.url, api_key=self.api_key, username=self.username,
                          password=self.password, ca_cert=self.ca_cert, timeout_s=timeout_s)

    def run(self, coro_fn: Callable[[ElasticsearchSink], Awaitable[T]],
            timeout: float = 120.0) -> T:
        """`coro_fn(sink)` on a fresh sink, bounded in time, the sink closed afterwards."""
        async def scenario() -> T:
            sink = ElasticsearchSink(self.connection())
            try:
                return await coro_fn(sink)
            finally:
                await sink.close()

        return asyncio.run(asyncio.wait_for(scenario(), timeout))




@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    url = os.environ.get(ENV + "URL")
    if url:
        ca = os.environ.get(ENV + "CA_CERT")
        yield Cluster(url, os.environ.get(ENV + "USERNAME"), os.environ.get(ENV + "PASSWORD"),
                      os.environ.get(ENV + "API_KEY"), Path(ca) if ca else None)
        return
    if not docker_reachable():
        pytest.skip(NO_CLUSTER)
    from docker.errors import DockerException  # type: ignore[import-untyped]
    from testcontainers.community.elasticsearch import ElasticSearchContainer

    try:
        container = ElasticSearchContainer(IMAGE, mem_limit="1g")
    except DockerException:
        pytest.skip(NO_CLUSTER)
    # ElasticSearchContainer already turns security off for 8.x/9.x and binds transport to
    # 127.0.0.1 (a single-node cluster); keep the heap inside the 1 GB and the disk checks
    # off, so a full CI disk cannot put a read-only block on the test indices.
    container.with_env("ES_JAVA_OPTS", "-Xms512m -Xmx512m")
    container.with_env("cluster.routing.allocation.disk.threshold_enabled", "false")
    container.with_env("ingest.geoip.downloader.enabled", "false")
    with container:
        host = container.get_container_host_ip()
        host = "127.0.0.1" if host in ("localhost", "0.0.0.0") else host
        yield Cluster(f"http://{host}:{container.get_exposed_port(container.port)}", fresh=True)


async def _snapshot(sink: ElasticsearchSink) -> dict[str, Any]:
    """What the cluster holds under our asset names before the suite touches them."""
    c = sink.client.options(ignore_status=404)
    policy = await c.ilm.get_lifecycle(name=POLICY)
    found: dict[str, Any] = {"policy": policy.body.get(POLICY, {}).get("policy")
                             if policy.meta.status == 200 else None}
    for name in (MAPPINGS, SETTINGS):
        got = await c.cluster.get_component_template(name=name)
        listed = got.body.get("component_templates", []) if got.meta.status == 200 else []
        found[name] = listed[0]["component_template"] if listed else None
    got = await c.indices.get_index_template(name=TEMPLATE)
    listed = got.body.get("index_templates", []) if got.meta.status == 200 else []
    found[TEMPLATE] = listed[0]["index_template"] if listed else None
    return found


async def _restore(sink: ElasticsearchSink, before: dict[str, Any]) -> None:
    """Put back what was there before the suite, and remove what was not."""
    c = sink.client
    absent_ok = c.options(ignore_status=404)
    template = before[TEMPLATE]
    if template is None:
        await absent_ok.indices.delete_index_template(name=TEMPLATE)
    for name in (MAPPINGS, SETTINGS):
        body = before[name]
        if body is None:
            await absent_ok.cluster.delete_component_template(name=name)
        else:
            await c.cluster.put_component_template(
                name=name, template=body["template"], meta=body.get("_meta"),
                version=body.get("version"))
    if template is not None:
        allowed = ("index_patterns", "composed_of", "priority", "data_stream", "template",
                   "version", "allow_auto_create", "ignore_missing_component_templates")
        await c.indices.put_index_template(
            name=TEMPLATE, meta=template.get("_meta"),
            **{k: v for k, v in template.items() if k in allowed})
    if before["policy"] is None:
        await absent_ok.ilm.delete_lifecycle(name=POLICY)
    else:
        await c.ilm.put_lifecycle(name=POLICY, policy=before["policy"])


@pytest.fixture(scope="session")
def assets_restored(cluster: Cluster) -> Iterator[None]:
    """The suite installs the ILM policy and templates; afterwards the cluster is as found."""
    before = cluster.run(_snapshot)
    yield
    cluster.run(lambda sink: _restore(sink, before))
