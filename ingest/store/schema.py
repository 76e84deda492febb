"""The store's tables, indexes and statements: one place for the SQL the writer runs."""

from __future__ import annotations

PENDING, SHIPPED, DEAD = 0, 1, 2
STATES = {PENDING: "pending", SHIPPED: "shipped", DEAD: "dead"}
DB_NAME = "events.db"
INDEX_NAME = "index.db"  # the derived tables
# What the reports read, beside `ts` and `seq`: in `facts` and, for the tail, in `events`.
FACT_COLUMNS = (
    ("model", "TEXT"), ("status_code", "INTEGER"), ("latency_ms", "REAL"), ("user_id", "TEXT"),
    ("error_message", "TEXT"), ("cost_usd", "REAL"), ("computed_cost_usd", "REAL"),
    ("prompt_tokens", "INTEGER"), ("completion_tokens", "INTEGER"), ("tokens_used", "INTEGER"),
)
SCHEMA_VERSION = 3

# The acknowledgement path writes only the events table, its unique event id and the pending
# index (both in arrival order for typical ids). Everything searched or reported by other keys
# lives in the derived tables of a second database file, filled in bulk on a thread of its
# own by `ingest.store.index`: random-key indexes kept per commit group rewrote a page per row
# per index, and filling them on the event loop stalled every request in flight.
SCHEMA = f"""
PRAGMA page_size = 16384;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    model TEXT,
    status_code INTEGER,
    latency_ms REAL,
    user_id TEXT,
    trace_id TEXT,
    error_message TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    tokens_used INTEGER,
    cost_usd REAL,
    computed_cost_usd REAL,
    doc BLOB NOT NULL,
    raw BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT {PENDING}
);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events(event_id);
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE state = {PENDING};
-- Shipped and dead events in order, for retention with a sink: unshipped events at the front
-- must not hide the shipped ones behind them. Events are stored pending, so the ack path never
-- touches it; marking an event shipped appends to it. Opening an older store builds it once.
CREATE INDEX IF NOT EXISTS events_settled ON events(seq) WHERE state != {PENDING};
-- Events deleted since the indexer last looked: their derived rows go next. A row with
-- `rewind` set says the newest events went, so their sequence numbers will be handed out again.
CREATE TABLE IF NOT EXISTS forgotten (
    id INTEGER PRIMARY KEY,
    seq INTEGER, ts INTEGER, user_id TEXT, trace_id TEXT, rewind INTEGER
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    failed_at INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    target TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL
);
PRAGMA user_version = {SCHEMA_VERSION};
"""
# Everything SCHEMA creates: a store of this version holding them all opens without a write,
# which a full disk would refuse.
OBJECTS = frozenset({"events", "events_event_id", "events_pending", "events_settled",
                     "forgotten", "dead_letters", "quarantine"})
# The derived tables, in `INDEX_NAME`: each complete up to its own meta row, which readers
# add the events after (the tail) to. Everything here can be rebuilt from the events.
_INDEX_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {{ix}}.facts (
    ts INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    {", ".join(f"{c} {t}" for c, t in FACT_COLUMNS)},
    PRIMARY KEY (ts, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {{ix}}.by_user (
    user_id TEXT NOT NULL, ts INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, ts, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {{ix}}.by_trace (
    trace_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (trace_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {{ix}}.meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO {{ix}}.meta (key, value)
    VALUES ('facts', 0), ('by_user', 0), ('by_trace', 0), ('forgotten', 0);
"""


def index_schema(schema: str = "main") -> str:
    """The derived tables' DDL, for the database attached under `schema`."""
    return _INDEX_SCHEMA.format(ix=schema)


# Version 1 kept every index on the events table, version 2 the derived tables beside it:
# opening such a store drops them and the indexer fills its own file from the events held.
UPGRADE = """
DROP INDEX IF EXISTS events_user;
DROP INDEX IF EXISTS events_trace;
DROP INDEX IF EXISTS events_report;
DROP TABLE IF EXISTS facts;
DROP TABLE IF EXISTS by_user;
DROP TABLE IF EXISTS by_trace;
DROP TABLE IF EXISTS meta;
"""
DERIVED = ("facts", "by_user", "by_trace")


def watermark(table: str) -> str:
    """SQL for the last sequence number `table` holds (read in the query's own snapshot)."""
    assert table in DERIVED
    return f"(SELECT value FROM ix.meta WHERE key = '{table}')"
# The events table's columns a stored row fills, in `ingest.records.Row`'s field order: the
# writer inserts each row as the tuple it is (a test holds the two to each other).
EVENT_COLUMNS = ("event_id", "received_at", "ts", "model", "status_code", "latency_ms",
                 "user_id", "trace_id", "error_message", "prompt_tokens", "completion_tokens",
                 "tokens_used", "cost_usd", "computed_cost_usd", "doc", "raw")
COLUMNS = ", ".join(EVENT_COLUMNS)
VALUES = "(" + ", ".join("?" * len(EVENT_COLUMNS)) + ")"
# Multi-row statements of a few fixed sizes: far fewer calls per group, and few enough shapes
# that every statement stays in sqlite3's statement cache.
CHUNKS = (64, 16, 4, 1)
INSERTS = {n: f"INSERT OR IGNORE INTO events ({COLUMNS}) VALUES " + ", ".join([VALUES] * n)
            + " RETURNING event_id" for n in CHUNKS}
ID_PROBE = 500  # ids per `IN (...)` lookup, well under SQLite's bound-parameter limit
QUARANTINE = ("INSERT OR IGNORE INTO quarantine (received_at, reason, digest, raw) "
               "VALUES (?, ?, ?, ?)")
PRUNE_CHUNK = 2000
ROW_OVERHEAD = 300  # columns and index entries beside the document and raw bytes
