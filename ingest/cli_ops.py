"""The commands that run against the sinks and the store: report, setup, ship, dlq."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from ingest.cli import _listing, _reader, use_elasticsearch
from ingest.errors import ConfigError
from ingest.settings import load

REPORT_HELP = """\
The questions, answered the same way from the embedded store or from Elasticsearch:
  latency   p50/p90/p95/p99 overall and per model, and the latency-bucket split.
            The store computes exact percentiles (linear interpolation between ranks);
            Elasticsearch's are approximate (t-digest, typically within 1 % for these sizes).
  errors    per model: requests, errors (status >= 400), error rate, top error messages.
  cost      per UTC day (--by model|user to split): relay-reported and computed cost,
            prompt/completion/total tokens, requests.
An empty window says so (exit 1) instead of printing zeros."""


def cmd_setup(args: argparse.Namespace) -> int:
    from ingest.sink import ElasticsearchSink, connection

    settings = load()
    sink = ElasticsearchSink(connection(settings))

    async def run() -> list[str]:
        try:
            version = await _wait_for(sink, args.wait)
            print(f"Elasticsearch {version} at {sink.url}")
            return await sink.setup(
                settings.data_stream, settings.ilm_rollover_max_age,
                settings.ilm_rollover_max_primary_shard_size, settings.ilm_delete_after,
                dry_run=args.dry_run)
        finally:
            await sink.close()

    for line in asyncio.run(run()):
        print(line)
    if args.kibana:
        print(asyncio.run(_kibana(settings, args.wait)))
    return 0


async def _kibana(settings: Any, wait: float) -> str:
    from ingest.errors import SinkUnavailable
    from ingest.kibana import import_saved_objects, saved_objects_path

    if not settings.kibana_url:
        raise ConfigError("--kibana needs INGEST_KIBANA_URL (for example http://localhost:5601)")
    path = saved_objects_path()
    deadline = time.monotonic() + wait
    while True:
        try:
            password, key = settings.kibana_password, settings.kibana_api_key
            answer = await import_saved_objects(
                settings.kibana_url, username=settings.kibana_username,
                password=password.get_secret_value() if password else None,
                api_key=key.get_secret_value() if key else None,
                ca_cert=settings.kibana_ca_cert, path=path)
            return (f"imported {answer.get('successCount', 0)} Kibana objects from {path.name} "
                    "(overwriting earlier copies)")
        except SinkUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(2)  # Kibana answers 503 while it starts; bounded by --wait


async def _wait_for(sink: Any, seconds: float) -> str:
    from ingest.errors import SinkUnavailable

    deadline = time.monotonic() + seconds
    while True:
        try:
            version: str = await sink.check_version()
            return version
        except SinkUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(2)  # waiting for a cluster that is starting, bounded by --wait


def cmd_ship(args: argparse.Namespace) -> int:
    from ingest.app import build_shipper, build_store
    from ingest.metrics import Metrics

    settings = load(data_dir=args.data_dir)
    if not settings.sink_kind():
        raise ConfigError("set INGEST_ELASTICSEARCH_URL (for example http://localhost:9200) "
                          "or INGEST_LOGSTASH_URL")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> None:
        store = build_store(settings)
        store.start()
        shipper, reader, sink = build_shipper(settings, store, Metrics())
        try:
            # A one-shot run stops on a refusal with its reason; a long one waits it out.
            await (shipper.drain(give_up_on_refusal=True) if args.once else shipper.run())
        finally:
            await sink.close()
            reader.close()
            store.close()
        stats = shipper.stats
        print(f"indexed {stats.indexed}, already there {stats.conflicts}, "
              f"dead letters {stats.dead_lettered}")

    asyncio.run(run())
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    with _reader(args.data_dir) as reader:
        letters = reader.dead_letters(args.limit)
    return _listing(letters, args.json, "no dead letters",
                    lambda d: f"#{d['seq']} {d['event_id']} HTTP {d['status']} "
                              f"{d['error_type']}: {d['reason'][:200]}")


def cmd_dlq_show(args: argparse.Namespace) -> int:
    with _reader(args.data_dir) as reader:
        letter = reader.dead_letter(args.seq)
    if letter is None:
        print(f"no dead letter #{args.seq}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(letter, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from ingest.store import requeue_dead

    doc = None
    if args.doc is not None:
        if args.all:
            raise ConfigError("--doc replaces one document: give one SEQ, not --all")
        try:
            parsed = orjson.loads(args.doc.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"--doc {args.doc}: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"--doc {args.doc}: the document must be a JSON object")
        doc = orjson.dumps(parsed)
    before = _dead_count(args.data_dir)
    _apply(args.data_dir, requeue_dead(None if args.all else [args.seq], doc))
    moved = before - _dead_count(args.data_dir)
    print(f"{moved} dead letter(s) pending again; the shipper sends them next")
    return 0 if moved else 1


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    from ingest.settings import parse_duration
    from ingest.store import purge_dead

    cutoff = None
    if args.older_than:
        try:
            age = parse_duration(args.older_than)
        except ValueError as exc:
            raise ConfigError(f"--older-than: {exc}") from None
        cutoff = int((time.time() - age.total_seconds()) * 1000)
    before = _dead_count(args.data_dir)
    _apply(args.data_dir, purge_dead(cutoff))
    print(f"{before - _dead_count(args.data_dir)} dead letter(s) deleted")
    return 0


def _dead_count(data_dir: Path | None) -> int:
    with _reader(data_dir) as reader:
        return reader.counts()["dead"]


def _apply(data_dir: Path | None, op: Any) -> None:
    from ingest.app import build_store

    async def run() -> None:
        store = build_store(load(data_dir=data_dir))
        store.start()
        try:
            await store.apply(op)
        finally:
            store.close()

    asyncio.run(run())


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ingest import reports

    settings = load(data_dir=args.data_dir)
    q = reports.query(args.question, args.since, args.until, args.model, args.user,
                      datetime.now(UTC))
    use_es = use_elasticsearch(args.backend, settings.elasticsearch_url)
    if use_es:
        result = asyncio.run(_report_es(settings, args.question, q, args.by))
    else:
        with _reader(args.data_dir) as reader:
            result = reports.answer(args.question, q, args.by, reader)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        return 0
    if reports.empty(result):
        window = result["window"]
        print(f"no events between {window['since']} and {window['until']}"
              + (f" for model {args.model}" if args.model else "")
              + (f" for user {args.user}" if args.user else ""), file=sys.stderr)
        return 1
    from ingest.render import render

    render(result)
    return 0


async def _report_es(settings: Any, question: str, q: Any, by: str) -> dict[str, Any]:
    from ingest import reports
    from ingest.sink import ElasticsearchSink, connection

    async with ElasticsearchSink(connection(settings)) as sink:
        response = await sink.search(settings.data_stream, reports.es_body(question, q, by))
    return reports.from_es(question, q, response, by)
