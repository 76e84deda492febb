"""The durable embedded store (SQLite, WAL): the only package that imports sqlite3."""

from ingest.records import Invalid
from ingest.store.durability import background_priority
from ingest.store.ops import mark_done, purge_dead, requeue_dead
from ingest.store.options import Background, Budget, Retention
from ingest.store.reader import Reader
from ingest.store.schema import DB_NAME, DEAD, PENDING, SHIPPED, STATES
from ingest.store.writer import Op, Store

__all__ = [
    "DB_NAME", "DEAD", "PENDING", "SHIPPED", "STATES", "Background", "Budget", "Invalid", "Op",
    "Reader", "Retention", "Store", "background_priority", "mark_done", "purge_dead",
    "requeue_dead",
]
