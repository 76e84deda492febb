"""The store's settings, grouped by the job that reads them; every field has a default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Budget:
    """The disk budget (its rules are in `space`): writes are refused once the store holds
    over `max_bytes`, or its disk has under `min_free_bytes` free (plus what a checkpoint of
    the WAL needs)."""

    max_bytes: int = 10 << 30
    min_free_bytes: int = 100 << 20


@dataclass(frozen=True, slots=True)
class Retention:
    """Events and quarantined items are deleted `retention_ms` after they were received.
    `keep_pending`: with a sink, retention never deletes what has not been shipped yet."""

    retention_ms: int = 30 * 86_400_000
    keep_pending: bool = False


@dataclass(frozen=True, slots=True)
class Background:
    """The work off the event loop. The indexer thread fills the derived tables once
    `index_batch` events wait, or `index_delay_s` after its last round; the WAL is
    checkpointed every `checkpoint_every_s` and, grown by a burst, cut back to
    `wal_limit_bytes` when it starts over."""

    index_batch: int = 1500
    index_delay_s: float = 1.0
    checkpoint_every_s: float = 1.0
    wal_limit_bytes: int = 64 << 20
