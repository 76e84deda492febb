"""Signs and posts events to a receiver, as the relay would: used by `send`, tests and demos."""

from __future__ import annotations

import asyncio
import gzip as gzip_lib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from ingest.receive.signing import signed_headers


@dataclass
class Summary:
    """What happened to every request: status codes, transport errors, events, time."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and all(200 <= s < 300 for s in self.statuses)


def encode(batch: Sequence[bytes], ndjson: bool) -> tuple[bytes, str]:
    """A body and its content type: one event as is, several as a JSON array or NDJSON."""
    if ndjson:
        return b"\n".join(batch) + b"\n", "application/x-ndjson"
    if len(batch) == 1:
        return batch[0], "application/json"
    return b"[" + b",".join(batch) + b"]", "application/json"


def request_for(batch: Sequence[bytes], secret: str, *, ndjson: bool = False, gzip: bool = False,
                now: float | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one signed delivery (the signature covers the bytes sent)."""
    body, content_type = encode(batch, ndjson)
    headers = {"Content-Type": content_type}
    if gzip:
        body = gzip_lib.compress(body, 5)
        headers["Content-Encoding"] = "gzip"
    headers.update(signed_headers(secret, body, int(time.time() if now is None else now)))
    return body, headers


def batches(events: Iterable[dict[str, Any] | bytes], size: int) -> Iterable[list[bytes]]:
    batch: list[bytes] = []
    for event in events:
        batch.append(event if isinstance(event, bytes) else orjson.dumps(event))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def send(
    url: str,
    secret: str,
    events: Iterable[dict[str, Any] | bytes],
    *,
    batch_size: int = 1,
    concurrency: int = 8,
    rate: float | None = None,
    ndjson: bool = False,
    gzip: bool = False,
    timeout: float = 30.0,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Post every event, `concurrency` requests at a time, paced to `rate` events/s if given."""
    summary = Summary()
    work: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=concurrency * 2)
    start = time.monotonic()
    scheduled = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal scheduled
        while (batch := await work.get()) is not None:
            if rate:
                # Pace by the event count already handed out: rate is in events per second.
                due = start + scheduled / rate
                scheduled += len(batch)
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            body, headers = request_for(batch, secret, ndjson=ndjson, gzip=gzip)
            summary.requests += 1
            summary.events += len(batch)
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                summary.failures[type(exc).__name__] += 1
            else:
                summary.statuses[response.status_code] += 1
                _tally(summary, response)
            if on_progress:
                on_progress(len(batch))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        for batch in batches(events, batch_size):
            await work.put(batch)
        for _ in tasks:
            await work.put(None)
        await asyncio.gather(*tasks)
    summary.seconds = time.monotonic() - start
    return summary


def _tally(summary: Summary, response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            answer = response.json()
        except ValueError:
            return
        if isinstance(answer, dict):
            summary.accepted += int(answer.get("accepted", 0))
            summary.duplicates += int(answer.get("duplicates", 0))
            summary.quarantined += int(answer.get("quarantined", 0))
