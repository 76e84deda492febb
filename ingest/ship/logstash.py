"""Logstash route: NDJSON batches to a Logstash `http` input, with the shipper's retry rules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx

from ingest.errors import ConfigError, RemoteRefused
from ingest.records import DeadLetter, Outcome, Pending
from ingest.remote import answer_error, redact, retryable, transport_error
from ingest.ship import bulk

CREDENTIALS = "INGEST_LOGSTASH_USERNAME/_PASSWORD"


@dataclass(frozen=True)
class LogstashConnection:
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0


class LogstashSink:
    """Posts batches of documents; Logstash answers per request, so failures are per batch.

    The event id travels in each document: the pipeline's elasticsearch output uses it as the
    `_id` with `action => create`, so a re-sent batch never makes a second document.
    """

    def __init__(self, conn: LogstashConnection,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not conn.url.startswith(("http://", "https://")):
            raise ConfigError(f"INGEST_LOGSTASH_URL {redact(conn.url)!r} must start with http(s)://")
        self.url = redact(conn.url)
        auth = (conn.username, conn.password or "") if conn.username else None
        self.client = httpx.AsyncClient(timeout=conn.timeout_s, auth=auth, transport=transport)
        self._post_url = conn.url

    async def close(self) -> None:
        await self.client.aclose()

    async def check_version(self) -> str:
        return "Logstash http input"  # it has no version endpoint; the first batch tells

    def chunks(self, items: Iterable[Pending], index: str, max_docs: int,
               max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]:
        """NDJSON of the documents (raw event as event.original), bounded like bulk bodies."""
        return bulk.batches(items, _line, max_docs, max_bytes)

    async def send(self, items: list[Pending], body: bytes) -> Outcome:
        try:
            response = await self.client.post(
                self._post_url, content=body, headers={"content-type": "application/x-ndjson"})
        except httpx.HTTPError as exc:
            raise transport_error("Logstash", exc) from None
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(shipped=list(items))
        if retryable(status) or status in (401, 403):
            raise answer_error("Logstash", status, credentials=CREDENTIALS)
        if status == 413:
            raise RemoteRefused(f"Logstash: HTTP 413 {response.text[:200]}", 413)
        if len(items) > 1:
            # Without per-item answers, halve the batch until the refused event stands alone.
            half = len(items) // 2
            first = await self.send(items[:half], b"".join(map(_line, items[:half])))
            second = await self.send(items[half:], b"".join(map(_line, items[half:])))
            return Outcome(shipped=first.shipped + second.shipped,
                                dead=first.dead + second.dead)
        return Outcome(dead=[DeadLetter(items[0], status, "logstash_rejected",
                                             response.text[:500])])


def _line(item: Pending) -> bytes:
    return bulk.source(item.doc, item.raw) + b"\n"
