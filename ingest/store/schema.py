"""The store's tables, indexes and statements: one place for the SQL the writer runs."""

from __future__ import annotations

from ingest.enrich import Row

PENDING, SHIPPED, DEAD = 0, 1, 2
STATES = {PENDING: "pending", SHIPPED: "shipped", DEAD: "dead"}
DB_NAME = "events.db"
SCHEMA_VERSION = 1

SCHEMA = f"""
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
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, ts) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_trace ON events(trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE state = {PENDING};
-- Covering index for the reports: a window scan reads this narrow index, not the documents.
CREATE INDEX IF NOT EXISTS events_report ON events(ts, model, status_code, latency_ms, user_id,
    cost_usd, computed_cost_usd, prompt_tokens, completion_tokens, tokens_used);
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
COLUMNS = ", ".join(Row._fields)
VALUES = "(" + ", ".join("?" * len(Row._fields)) + ")"
# Multi-row statements of a few fixed sizes: far fewer calls per group, and few enough shapes
# that every statement stays in sqlite3's statement cache.
CHUNKS = (64, 16, 4, 1)
INSERTS = {n: f"INSERT OR IGNORE INTO events ({COLUMNS}) VALUES " + ", ".join([VALUES] * n)
            for n in CHUNKS}
ID_PROBE = 500  # ids per `IN (...)` lookup, well under SQLite's bound-parameter limit
QUARANTINE = ("INSERT OR IGNORE INTO quarantine (received_at, reason, digest, raw) "
               "VALUES (?, ?, ?, ?)")
PRUNE_CHUNK = 2000
ROW_OVERHEAD = 300  # columns and index entries beside the document and raw bytes
