"""Elasticsearch: the only module that imports the official client; bulk I/O, version, setup."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import elastic_transport
import elasticsearch
from elastic_transport import HttpxAsyncHttpNode
from elasticsearch import AsyncElasticsearch

from ingest.bulk import FILTER_PATH, classify, merge
from ingest.bulk import chunks as bulk_chunks
from ingest.errors import ConfigError, SinkError, SinkRefused, SinkUnavailable, SinkVersionMismatch
from ingest.records import DeadLetter, Outcome, Pending
from ingest.remote import answer_error, redact, timed_out, unreachable
from ingest.settings import Settings

CLIENT_VERSION = version("elasticsearch")
CLIENT_MAJOR = int(CLIENT_VERSION.split(".")[0])
POLICY = "holysheep-requests"
MAPPINGS = "holysheep-requests-mappings"
SETTINGS = "holysheep-requests-settings"
TEMPLATE = "holysheep-requests"
MANAGED_BY = "holysheep-ingest"
CREDENTIALS = "INGEST_ELASTICSEARCH_API_KEY or _USERNAME/_PASSWORD"
# BulkRequest.validate runs every item's own validation (an `_id` over 512 bytes, ...) and
# fails the whole request with this type when one of them does.
VALIDATION = "action_request_validation_exception"
_DATA_STREAM = re.compile(r"^(logs|metrics|traces)-([^-]+)-([^-]+)$")


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


def connection(settings: Settings) -> Connection:
    """The cluster connection from settings; ConfigError when no URL is set."""
    if not settings.elasticsearch_url:
        raise ConfigError("set INGEST_ELASTICSEARCH_URL (for example http://localhost:9200)")
    key, password = settings.elasticsearch_api_key, settings.elasticsearch_password
    return Connection(
        url=settings.elasticsearch_url,
        api_key=key.get_secret_value() if key else None,
        username=settings.elasticsearch_username,
        password=password.get_secret_value() if password else None,
        ca_cert=settings.elasticsearch_ca_cert,
        verify_certs=settings.elasticsearch_verify_certs,
        timeout_s=settings.elasticsearch_timeout.total_seconds())


class ElasticsearchSink:
    """Bulk requests and setup over one AsyncElasticsearch client with its own retries off."""

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

    async def __aenter__(self) -> ElasticsearchSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def check_version(self) -> str:
        """The server version; raises SinkVersionMismatch when its major is not the client's."""
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
            raise SinkUnavailable(f"reading the cluster version: HTTP {meta.status}", meta.status)
        if meta.headers.get("x-elastic-product") != "Elasticsearch":
            raise SinkRefused(f"the server at {self.url} is not Elasticsearch")
        number = str(info["version"]["number"])
        major = int(number.split(".")[0])
        if major != CLIENT_MAJOR:
            raise SinkVersionMismatch(
                f"Elasticsearch at {self.url} is {number} but the installed Python client is "
                f"{CLIENT_VERSION}: client and server majors must match. Install "
                f"`pip install 'elasticsearch>={major},<{major + 1}'` or use a {CLIENT_MAJOR}.x "
                "cluster.")
        return number

    async def bulk(self, body: bytes) -> dict[str, Any]:
        """One `_bulk` request; raises SinkUnavailable (retry) or SinkRefused (pause)."""
        try:
            response = await self.client.bulk(
                body=body, filter_path=FILTER_PATH)  # type: ignore[arg-type]
        except Exception as exc:
            raise _translate(exc, "bulk request") from None
        result: dict[str, Any] = dict(response.body)
        return result

    def chunks(self, items: Iterable[Pending], index: str, max_docs: int,
               max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]:
        return bulk_chunks(items, index, max_docs, max_bytes)

    async def send(self, items: list[Pending], body: bytes) -> Outcome:
        """One bulk request, classified item by item; a whole-request 400 is narrowed down."""
        try:
            return classify(items, await self.bulk(body))
        except SinkRefused as exc:
            lines = _item_lines(items, body)
            if exc.status != 400 or lines is None:
                raise
            return await self._narrow(items, lines, exc, isolated=False)

    async def _narrow(self, items: list[Pending], lines: list[bytes], refusal: SinkRefused,
                      isolated: bool) -> Outcome:
        """Halve a batch refused as a whole until each refused event stands alone.

        A lone event becomes a dead letter when Elasticsearch's item validation refused it
        (VALIDATION), or when the other half of its batch was accepted: then the event is at
        fault. A refusal of every part alike is the request's (a parameter, the framing):
        it is raised, and shipping pauses as for any other refusal.
        """
        validation = refusal.error_type == VALIDATION
        if len(items) == 1:
            if validation or isolated:
                return Outcome(dead=[DeadLetter(items[0], 400, refusal.error_type or
                                                "bad_request", refusal.message)])
            raise refusal
        half = len(items) // 2
        parts = [(items[:half], lines[:half]), (items[half:], lines[half:])]
        done: list[Outcome] = []
        refused: list[tuple[list[Pending], list[bytes], SinkRefused]] = []
        for part, part_lines in parts:
            try:
                done.append(classify(part, await self.bulk(b"".join(part_lines))))
            except SinkRefused as exc:
                if exc.status != 400:
                    raise
                refused.append((part, part_lines, exc))
        if len(refused) == len(parts) and not validation:
            raise refusal
        for part, part_lines, why in refused:
            done.append(await self._narrow(part, part_lines, why, isolated=len(refused) == 1))
        return merge(done)

    async def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search request (the report queries); errors as in `bulk`."""
        try:
            response = await self.client.search(index=index, **body)
        except Exception as exc:
            raise _translate(exc, "search") from None
        result: dict[str, Any] = dict(response.body)
        return result

    async def setup(self, data_stream: str, rollover_max_age: str, rollover_max_size: str,
                    delete_after: str, dry_run: bool = False) -> list[str]:
        """Install policy, templates and the data stream; returns what it did, line by line."""
        bodies = assets(data_stream, rollover_max_age, rollover_max_size, delete_after)
        done: list[str] = []
        c = self.client
        absent_ok = c.options(ignore_status=404)
        try:
            current = await _meta(c.ilm.get_lifecycle(name=POLICY), POLICY, "policy")
            done.append(await _apply(f"ILM policy {POLICY}", bodies["policy"], current, dry_run,
                                     c.ilm.put_lifecycle(name=POLICY, policy=bodies["policy"])
                                     if not dry_run else None))
            for name in (MAPPINGS, SETTINGS):
                found = await absent_ok.cluster.get_component_template(name=name)
                templates = found.body.get("component_templates", []) if found.meta.status == 200 \
                    else []
                current_meta = templates[0]["component_template"].get("_meta") if templates \
                    else None
                body = bodies[name]
                done.append(await _apply(
                    f"component template {name}", body, current_meta, dry_run,
                    None if dry_run else c.cluster.put_component_template(
                        name=name, template=body["template"], meta=body["_meta"])))
            found = await absent_ok.indices.get_index_template(name=TEMPLATE)
            templates = found.body.get("index_templates", []) if found.meta.status == 200 else []
            current_meta = templates[0]["index_template"].get("_meta") if templates else None
            body = bodies[TEMPLATE]
            done.append(await _apply(
                f"index template {TEMPLATE} ({', '.join(body['index_patterns'])})", body,
                current_meta, dry_run, None if dry_run else c.indices.put_index_template(
                    name=TEMPLATE, index_patterns=body["index_patterns"],
                    data_stream=body["data_stream"], composed_of=body["composed_of"],
                    priority=body["priority"], template=body.get("template"),
                    meta=body["_meta"])))
            exists = await absent_ok.indices.get_data_stream(name=data_stream)
            if exists.meta.status == 200:
                done.append(f"unchanged  data stream {data_stream}")
            elif dry_run:
                done.append(f"would create  data stream {data_stream}")
            else:
                await c.indices.create_data_stream(name=data_stream)
                done.append(f"created  data stream {data_stream}")
        except SinkError:
            raise
        except Exception as exc:
            raise _translate(exc, "setup") from None
        return done


async def _meta(call: Any, name: str, key: str) -> dict[str, Any] | None:
    try:
        found = await call
    except elasticsearch.NotFoundError:
        return None
    meta: dict[str, Any] | None = found.body.get(name, {}).get(key, {}).get("_meta")
    return meta


async def _apply(what: str, body: dict[str, Any], current_meta: dict[str, Any] | None,
                 dry_run: bool, put: Any) -> str:
    wanted = body["_meta"]["content_hash"] if "_meta" in body else body.get(
        "policy", {}).get("_meta", {}).get("content_hash")
    if current_meta and current_meta.get("content_hash") == wanted:
        if put is not None:
            put.close()  # the coroutine is not needed
        return f"unchanged  {what}"
    verb = "update" if current_meta is not None else "create"
    if dry_run:
        return f"would {verb}  {what}"
    await put
    return f"{verb}d  {what}"


def template_pattern(data_stream: str) -> str:
    """`logs-holysheep.requests-*` for a `logs-<dataset>-<namespace>` name, else the name."""
    match = _DATA_STREAM.match(data_stream)
    return f"{match.group(1)}-{match.group(2)}-*" if match else data_stream


def assets(data_stream: str, rollover_max_age: str, rollover_max_size: str,
           delete_after: str) -> dict[str, dict[str, Any]]:
    """The JSON files under elasticsearch/ with the configured numbers, each hashed in `_meta`."""
    policy = _load("ilm-policy.json")
    phases = policy["policy"]["phases"]
    phases["hot"]["actions"]["rollover"].update(
        max_age=rollover_max_age, max_primary_shard_size=rollover_max_size)
    phases["delete"]["min_age"] = delete_after
    mappings = _load("component-template-mappings.json")
    settings = _load("component-template-settings.json")
    settings["template"]["settings"]["index"]["lifecycle"] = {"name": POLICY}
    template = _load("index-template.json")
    template.update(index_patterns=[template_pattern(data_stream)],
                    composed_of=[MAPPINGS, SETTINGS], data_stream={})
    policy["policy"]["_meta"] = _hashed(policy["policy"])
    for body in (mappings, settings, template):
        body["_meta"] = _hashed(body)
    return {"policy": policy["policy"], MAPPINGS: mappings, SETTINGS: settings, TEMPLATE: template}


def _hashed(body: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (body.get("_meta") or {}).items() if k != "content_hash"}
    content = {k: v for k, v in body.items() if k != "_meta"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return {**meta, "managed_by": MANAGED_BY, "content_hash": digest}


def asset_dir() -> Path:
    """`elasticsearch/` of the source tree, else the copy installed under `share/`."""
    for base in (Path(__file__).resolve().parent.parent / "elasticsearch",
                 Path(sys.prefix) / "share" / "holysheep-ingest" / "elasticsearch"):
        # The file check matters: beside an installed package sits the client's own package.
        if (base / "ilm-policy.json").is_file():
            return base
    raise ConfigError("the Elasticsearch assets (ilm-policy.json, templates) are not installed")


def _load(name: str) -> dict[str, Any]:
    path = asset_dir() / name
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Elasticsearch asset {path}: {exc}") from exc
    return loaded


def _item_lines(items: list[Pending], body: bytes) -> list[bytes] | None:
    """The body cut back into each item's action and source lines (JSON holds no raw newline);
    None for a body not made of two lines per item."""
    lines = body.split(b"\n")
    if len(lines) != 2 * len(items) + 1:
        return None
    return [lines[i] + b"\n" + lines[i + 1] + b"\n" for i in range(0, 2 * len(items), 2)]


def _translate(exc: Exception, doing: str) -> SinkError:
    """The client's exceptions as our error tree: retry what may pass, refuse the rest."""
    if isinstance(exc, elasticsearch.UnsupportedProductError):
        return SinkRefused(f"{doing}: the server at this URL is not Elasticsearch")
    if isinstance(exc, elasticsearch.ApiError):
        error_type, reason = _reason(exc)
        return answer_error(doing, exc.meta.status, reason, credentials=CREDENTIALS,
                            error_type=error_type)
    if isinstance(exc, elastic_transport.ConnectionTimeout):
        return timed_out(doing)
    if isinstance(exc, elastic_transport.TransportError):
        return unreachable(doing, type(exc).__name__)
    return SinkUnavailable(f"{doing}: {type(exc).__name__}: {exc}")


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
