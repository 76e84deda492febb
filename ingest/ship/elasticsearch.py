"""The Elasticsearch sink: bulk bodies sent over the cluster client, a refused batch narrowed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from ingest.elastic import Cluster, Connection
from ingest.errors import RemoteRefused
from ingest.records import DeadLetter, Outcome, Pending
from ingest.ship.bulk import FILTER_PATH, classify, merge
from ingest.ship.bulk import chunks as bulk_chunks

# BulkRequest.validate runs every item's own validation (an `_id` over 512 bytes, ...) and
# fails the whole request with this type when one of them does.
VALIDATION = "action_request_validation_exception"


class BulkCluster(Protocol):
    """What the sink needs of a cluster: `elastic.Cluster`, or `testing.FakeCluster` in memory."""

    url: str

    async def bulk(self, body: bytes, filter_path: str) -> dict[str, Any]: ...

    async def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def check_version(self) -> str: ...

    async def close(self) -> None: ...


class ElasticsearchSink:
    """The shipper's Sink over `_bulk`: plan, send, classify each item."""

    def __init__(self, conn: Connection | BulkCluster) -> None:
        self.cluster: BulkCluster = Cluster(conn) if isinstance(conn, Connection) else conn
        self.url = self.cluster.url

    @property
    def client(self) -> Any:
        """The underlying client of a real cluster (the real-cluster suite reaches it so)."""
        return getattr(self.cluster, "client", None)

    async def close(self) -> None:
        await self.cluster.close()

    async def __aenter__(self) -> ElasticsearchSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def check_version(self) -> str:
        return await self.cluster.check_version()

    async def bulk(self, body: bytes) -> dict[str, Any]:
        return await self.cluster.bulk(body, FILTER_PATH)

    def chunks(self, items: Iterable[Pending], index: str, max_docs: int,
               max_bytes: int) -> Iterator[tuple[list[Pending], bytes]]:
        return bulk_chunks(items, index, max_docs, max_bytes)

    async def send(self, items: list[Pending], body: bytes) -> Outcome:
        """One bulk request, classified item by item; a whole-request 400 is narrowed down."""
        try:
            return classify(items, await self.bulk(body))
        except RemoteRefused as exc:
            lines = _item_lines(items, body)
            if exc.status != 400 or lines is None:
                raise
            return await self._narrow(items, lines, exc, isolated=False)

    async def _narrow(self, items: list[Pending], lines: list[bytes], refusal: RemoteRefused,
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
        refused: list[tuple[list[Pending], list[bytes], RemoteRefused]] = []
        for part, part_lines in parts:
            try:
                done.append(classify(part, await self.bulk(b"".join(part_lines))))
            except RemoteRefused as exc:
                if exc.status != 400:
                    raise
                refused.append((part, part_lines, exc))
        if len(refused) == len(parts) and not validation:
            raise refusal
        for part, part_lines, why in refused:
            done.append(await self._narrow(part, part_lines, why, isolated=len(refused) == 1))
        return merge(done)


def _item_lines(items: list[Pending], body: bytes) -> list[bytes] | None:
    """The body cut back into each item's action and source lines (JSON holds no raw newline);
    None for a body not made of two lines per item."""
    lines = body.split(b"\n")
    if len(lines) != 2 * len(items) + 1:
        return None
    return [lines[i] + b"\n" + lines[i + 1] + b"\n" for i in range(0, 2 * len(items), 2)]


