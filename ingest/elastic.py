"""Elasticsearch: the only module that imports the official client; every call we make to it."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import elastic_transport
import elasticsearch
from elastic_transport import HttpxAsyncHttpNode
from elasticsearch import AsyncElasticsearch

from ingest.errors import (
    ConfigError,
    RemoteError,
    RemoteRefused,
    RemoteUnavailable,
    VersionMismatch,
)
from ingest.remote import answer_error, redact, timed_out, unreachable

CLIENT_VERSION = version("elasticsearch")
CLIENT_MAJOR = int(CLIENT_VERSION.split(".")[0])
CREDENTIALS = "INGEST_ELASTICSEARCH_API_KEY or _USERNAME/_PASSWORD"


@dataclass(frozen=True)
class Connection:
    """How to reach the cluster; secrets stay in here and are never logged."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: Path | None = None
    verify_certs: bool = True
    timeout_s: float = 30.0


class Cluster:
    """One AsyncElasticsearch client, its own retries off: every call we make to the cluster.

    The client's exceptions leave here translated into our tree (`_translate`).
    """

    def __init__(self, conn: Connection) -> None:
        self.url = redact(conn.url)
        if conn.ca_cert is not None and not conn.ca_cert.is_file():
            raise ConfigError(f"INGEST_ELASTICSEARCH_CA_CERT: no file at {conn.ca_cert}")
        auth: dict[str, Any] = {"ca_certs": str(conn.ca_cert)} if conn.ca_cert else {}
        if conn.api_key:
            auth["api_key"] = conn.api_key
        elif conn.username:
            auth["basic_auth"] = (conn.username, conn.password or "")
        try:
            self.client = AsyncElasticsearch(
                conn.url, node_class=HttpxAsyncHttpNode, request_timeout=conn.timeout_s,
                # The shipper owns retries: it retries only the failed items, with backoff.
                max_retries=0, retry_on_timeout=False,
                verify_certs=conn.verify_certs, **auth)
        except ValueError:
            # Not the library's text: it repeats the URL, credentials and all.
            raise ConfigError(f"INGEST_ELASTICSEARCH_URL {self.url!r} is not a URL with scheme, "
                              "host and port, like https://localhost:9200") from None

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def check_version(self) -> str:
        """The server version; raises VersionMismatch when its major is not the client's."""
        try:
            # Through the transport with plain JSON: the client would send its compatibility
            # header, which an older server answers with a 400 instead of its version.
            headers = self.client._headers.copy()  # credentials included
            headers["accept"] = "application/json"
            meta, info = await self.client.transport.perform_request("GET", "/", headers=headers)
        except Exception as exc:
            raise _translate(exc, "reading the cluster version") from None
        if meta.status >= 300:
            raise answer_error("reading the cluster version", meta.status,
                               credentials=CREDENTIALS)
        if not isinstance(info, dict) or "version" not in info:
            raise RemoteUnavailable(f"reading the cluster version: HTTP {meta.status}", meta.status)
        if meta.headers.get("x-elastic-product") != "Elasticsearch":
            raise RemoteRefused(f"the server at {self.url} is not Elasticsearch")
        number = str(info["version"]["number"])
        major = int(number.split(".")[0])
        if major != CLIENT_MAJOR:
            raise VersionMismatch(
                f"Elasticsearch at {self.url} is {number} but the installed Python client is "
                f"{CLIENT_VERSION}: client and server majors must match. Install "
                f"`pip install 'elasticsearch>={major},<{major + 1}'` or use a {CLIENT_MAJOR}.x "
                "cluster.")
        return number

    async def bulk(self, body: bytes, filter_path: str) -> dict[str, Any]:
        """One `_bulk` request; raises RemoteUnavailable (retry) or RemoteRefused (pause)."""
        try:
            response = await self.client.bulk(
                body=body, filter_path=filter_path)  # type: ignore[arg-type]
        except Exception as exc:
            raise _translate(exc, "bulk request") from None
        result: dict[str, Any] = dict(response.body)
        return result

    async def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search request (the report queries); errors as in `bulk`."""
        try:
            response = await self.client.search(index=index, **body)
        except Exception as exc:
            raise _translate(exc, "search") from None
        result: dict[str, Any] = dict(response.body)
        return result


    # Setup: read each asset's `_meta` (None when absent), put it, create the data stream ------
    async def policy_meta(self, name: str) -> dict[str, Any] | None:
        return await self._meta(self.client.ilm.get_lifecycle(name=name), name, "policy",
                                "reading ILM policy")

    async def component_template_meta(self, name: str) -> dict[str, Any] | None:
        found = await self._call(self._absent_ok.cluster.get_component_template(name=name),
                                 "reading component template")
        templates = found.body.get("component_templates", []) if found.meta.status == 200 else []
        return templates[0]["component_template"].get("_meta") if templates else None

    async def index_template_meta(self, name: str) -> dict[str, Any] | None:
        found = await self._call(self._absent_ok.indices.get_index_template(name=name),
                                 "reading index template")
        templates = found.body.get("index_templates", []) if found.meta.status == 200 else []
        return templates[0]["index_template"].get("_meta") if templates else None

    async def put_policy(self, name: str, policy: dict[str, Any]) -> None:
        await self._call(self.client.ilm.put_lifecycle(name=name, policy=policy),
                         "putting ILM policy")

    async def put_component_template(self, name: str, body: dict[str, Any]) -> None:
        await self._call(self.client.cluster.put_component_template(
            name=name, template=body["template"], meta=body["_meta"]),
            "putting component template")

    async def put_index_template(self, name: str, body: dict[str, Any]) -> None:
        await self._call(self.client.indices.put_index_template(
            name=name, index_patterns=body["index_patterns"], data_stream=body["data_stream"],
            composed_of=body["composed_of"], priority=body["priority"],
            template=body.get("template"), meta=body["_meta"]), "putting index template")

    async def data_stream_exists(self, name: str) -> bool:
        found = await self._call(self._absent_ok.indices.get_data_stream(name=name),
                                 "reading data stream")
        return bool(found.meta.status == 200)

    async def create_data_stream(self, name: str) -> None:
        await self._call(self.client.indices.create_data_stream(name=name),
                         "creating data stream")

    @property
    def _absent_ok(self) -> AsyncElasticsearch:
        return self.client.options(ignore_status=404)

    @staticmethod
    async def _call(call: Awaitable[Any], doing: str) -> Any:
        try:
            return await call
        except Exception as exc:
            raise _translate(exc, f"setup: {doing}") from None

    @classmethod
    async def _meta(cls, call: Awaitable[Any], name: str, key: str,
                    doing: str) -> dict[str, Any] | None:
        try:
            found = await call
        except elasticsearch.NotFoundError:
            return None
        except Exception as exc:
            raise _translate(exc, f"setup: {doing}") from None
        meta: dict[str, Any] | None = found.body.get(name, {}).get(key, {}).get("_meta")
        return meta


def _translate(exc: Exception, doing: str) -> RemoteError:
    """The client's exceptions as our error tree: retry what may pass, refuse the rest."""
    if isinstance(exc, elasticsearch.UnsupportedProductError):
        return RemoteRefused(f"{doing}: the server at this URL is not Elasticsearch")
    if isinstance(exc, elasticsearch.ApiError):
        error_type, reason = _reason(exc)
        return answer_error(doing, exc.meta.status, reason, credentials=CREDENTIALS,
                            error_type=error_type)
    if isinstance(exc, elastic_transport.ConnectionTimeout):
        return timed_out(doing)
    if isinstance(exc, elastic_transport.TransportError):
        return unreachable(doing, type(exc).__name__)
    return RemoteUnavailable(f"{doing}: {type(exc).__name__}: {exc}")


def _reason(exc: Any) -> tuple[str | None, str]:
    """Elasticsearch's error type (None when it named none) and the `type: reason` text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            kind = str(error.get("type", ""))
            return kind or None, f"{kind}: {error.get('reason', '')}"
        if error:
            return None, str(error)
    return None, str(getattr(exc, "message", "")) or type(exc).__name__
