"""Kibana: the only module that talks to Kibana; imports kibana/holysheep.ndjson (saved objects)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ingest.assets import asset_path
from ingest.errors import ConfigError, RemoteError, RemoteRefused
from ingest.remote import answer_error, redact, transport_error

SAVED_OBJECTS = "holysheep.ndjson"
IMPORT_PATH = "/api/saved_objects/_import"
CREDENTIALS = "INGEST_KIBANA_API_KEY or INGEST_KIBANA_USERNAME/_PASSWORD"
_SHOWN_ERRORS = 5


def saved_objects_path() -> Path:
    """`kibana/holysheep.ndjson` of the source tree, else the copy installed under `share/`."""
    return asset_path("kibana", SAVED_OBJECTS, f"Kibana saved objects ({SAVED_OBJECTS})") \
        / SAVED_OBJECTS


async def import_saved_objects(
    url: str, *, username: str | None = None, password: str | None = None,
    api_key: str | None = None, ca_cert: Path | None = None, path: Path,
    timeout: float = 30, transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """POST `path` to Kibana's saved objects import with overwrite=true; returns Kibana's answer.

    Raises RemoteUnavailable when Kibana cannot be reached, times out or answers a status
    `ingest.remote` retries (Kibana answers 503 while it starts), RemoteRefused for 401/403, any
    other status or an import with `success: false`, and ConfigError for an unreadable file or
    CA certificate.
    Messages never contain credentials.
    """
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)
    except ValueError:
        usable = False
    if not usable:
        raise ConfigError("the Kibana URL is not usable: use http(s)://host:5601")
    shown = redact(url).rstrip("/")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the Kibana saved objects {path}: {exc.strerror}") from None
    verify: ssl.SSLContext | bool = True
    if ca_cert is not None:
        if not ca_cert.is_file():
            raise ConfigError(f"Kibana CA certificate: no file at {ca_cert}")
        try:
            verify = ssl.create_default_context(cafile=str(ca_cert))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"Kibana CA certificate {ca_cert}: {exc}") from None
    headers = {"kbn-xsrf": "true", "accept": "application/json"}
    auth: httpx.BasicAuth | None = None
    if api_key:
        headers["authorization"] = f"ApiKey {api_key}"
    elif username:
        auth = httpx.BasicAuth(username, password or "")
    doing = f"importing saved objects into Kibana at {shown}"
    secrets = [x for x in (password, api_key, parts.password) if x and len(x) >= 4]
    try:
        return _result(await _post(url, headers, auth, verify, timeout, transport, path.name,
                                   content), doing)
    except RemoteError as exc:
        # Kibana's own messages are quoted; make sure no secret ever comes back in one.
        message = exc.message
        for secret in secrets:
            message = message.replace(secret, "***")
        raise type(exc)(message, exc.status, error_type=exc.error_type) from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise transport_error(doing, exc, timeout) from None
    except httpx.InvalidURL:
        raise ConfigError(f"Kibana URL {shown!r} is not a usable URL") from None


async def _post(url: str, headers: dict[str, str], auth: httpx.BasicAuth | None,
                verify: ssl.SSLContext | bool, timeout: float,
                transport: httpx.AsyncBaseTransport | None, name: str,
                content: bytes) -> httpx.Response:
    async with httpx.AsyncClient(verify=verify, timeout=timeout, transport=transport,
                                 auth=auth, follow_redirects=False) as client:
        return await client.post(
            url.rstrip("/") + IMPORT_PATH, params={"overwrite": "true"}, headers=headers,
            files={"file": (name, content, "application/ndjson")})


def _result(response: httpx.Response, doing: str) -> dict[str, Any]:
    status = response.status_code
    if status != 200:
        raise answer_error(doing, status, _message(response), credentials=CREDENTIALS)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "success" not in body:
        raise RemoteRefused(f"{doing}: the answer is not a saved objects import result: is this "
                          "URL Kibana?", status)
    if body["success"] is not True:
        raise RemoteRefused(f"{doing}: Kibana refused the import: {_errors(body)}", status)
    result: dict[str, Any] = body
    return result


def _errors(body: dict[str, Any]) -> str:
    """The first failing objects as `type/id (error type: detail)`, and how many there were."""
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors:
        return "success is false and no errors were listed"
    shown = []
    for item in errors[:_SHOWN_ERRORS]:
        found: dict[str, Any] = item if isinstance(item, dict) else {}
        raw = found.get("error")
        error: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kind = str(error.get("type", "unknown"))
        detail = str(error.get("message") or error.get("reason") or "")
        if kind == "missing_references":
            missing = [f"{ref.get('type')}/{ref.get('id')}" for ref in error.get("references", [])
                       if isinstance(ref, dict)]
            detail = "missing " + ", ".join(missing) if missing else detail
        shown.append(f"{found.get('type')}/{found.get('id')} ({kind}{': ' if detail else ''}"
                     f"{detail[:200]})")
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "") + \
        f" ({len(errors)} failed, {body.get('successCount', 0)} imported)"


def _message(response: httpx.Response) -> str:
    """Kibana's own short reason from an error answer (`{"message": ...}`), else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or "")[:300]
    return ""
