"""Elasticsearch setup: the ILM policy and templates from elasticsearch/, hashed and installed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ingest.assets import asset_path
from ingest.elastic import Cluster
from ingest.errors import ConfigError

POLICY = "holysheep-requests"
MAPPINGS = "holysheep-requests-mappings"
SETTINGS = "holysheep-requests-settings"
TEMPLATE = "holysheep-requests"
MANAGED_BY = "holysheep-ingest"
_DATA_STREAM = re.compile(r"^(logs|metrics|traces)-([^-]+)-([^-]+)$")


async def setup(cluster: Cluster, data_stream: str, rollover_max_age: str,
                rollover_max_size: str, delete_after: str, dry_run: bool = False) -> list[str]:
    """Install policy, templates and the data stream; returns what it did, line by line."""
    bodies = assets(data_stream, rollover_max_age, rollover_max_size, delete_after)
    c = cluster
    done = [await _apply(f"ILM policy {POLICY}", bodies["policy"], await c.policy_meta(POLICY),
                         dry_run, None if dry_run else c.put_policy(POLICY, bodies["policy"]))]
    for name in (MAPPINGS, SETTINGS):
        done.append(await _apply(
            f"component template {name}", bodies[name], await c.component_template_meta(name),
            dry_run, None if dry_run else c.put_component_template(name, bodies[name])))
    body = bodies[TEMPLATE]
    done.append(await _apply(
        f"index template {TEMPLATE} ({', '.join(body['index_patterns'])})", body,
        await c.index_template_meta(TEMPLATE), dry_run,
        None if dry_run else c.put_index_template(TEMPLATE, body)))
    if await c.data_stream_exists(data_stream):
        done.append(f"unchanged  data stream {data_stream}")
    elif dry_run:
        done.append(f"would create  data stream {data_stream}")
    else:
        await c.create_data_stream(data_stream)
        done.append(f"created  data stream {data_stream}")
    return done


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
    """`elasticsearch/`: the ILM policy, the templates and the Dev Tools queries."""
    return asset_path("elasticsearch", "ilm-policy.json",
                      "Elasticsearch assets (ilm-policy.json, templates)")


def _load(name: str) -> dict[str, Any]:
    path = asset_dir() / name
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Elasticsearch asset {path}: {exc}") from exc
    return loaded


