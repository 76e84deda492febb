"""The commands that touch the sinks and the store's shipping state: setup, ship, dlq."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

import orjson

from ingest.cli.common import cluster, listing, reader, settings
from ingest.errors import ConfigError
from ingest.remote import while_unavailable
from ingest.settings import Settings


def cmd_setup(args: argparse.Namespace) -> int:
    from ingest.admin.elasticsearch import setup

    config = settings(args)
    c = cluster(config)

    async def run() -> list[str]:
        async with c:
            version = await while_unavailable(c.check_version, args.wait)
            print(f"Elasticsearch {version} at {c.url}")
            return await setup(
                c, config.data_stream, config.ilm_rollover_max_age,
                config.ilm_rollover_max_primary_shard_size, config.ilm_delete_after,
                dry_run=args.dry_run)

    for line in asyncio.run(run()):
        print(line)
    if args.kibana:
        print(asyncio.run(_kibana(config, args.wait)))
    return 0


async def _kibana(config: Settings, wait: float) -> str:
    from ingest.admin.kibana import import_saved_objects, saved_objects_path

    if not config.kibana_url:
        raise ConfigError("--kibana needs INGEST_KIBANA_URL (for example http://localhost:5601)")
    url, path = config.kibana_url, saved_objects_path()
    password, key = config.kibana_password, config.kibana_api_key
    # Kibana answers 503 while it starts: retried up to --wait.
    answer = await while_unavailable(lambda: import_saved_objects(
        url, username=config.kibana_username,
        password=password.get_secret_value() if password else None,
        api_key=key.get_secret_value() if key else None,
        ca_cert=config.kibana_ca_cert, path=path), wait)
    return (f"imported {answer.get('successCount', 0)} Kibana objects from {path.name} "
            "(overwriting earlier copies)")


def cmd_ship(args: argparse.Namespace) -> int:
    from ingest.app import build_shipper, build_store
    from ingest.metrics import Metrics

    config = settings(args)
    if not config.sink_kind():
        raise ConfigError("set INGEST_ELASTICSEARCH_URL (for example http://localhost:9200) "
                          "or INGEST_LOGSTASH_URL")
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> None:
        store = build_store(config)
        store.start()
        shipper, pending, sink = build_shipper(config, store, Metrics())
        try:
            # A one-shot run stops on a refusal with its reason; a long one waits it out.
            await (shipper.drain(give_up_on_refusal=True) if args.once else shipper.run())
        finally:
            await sink.close()
            pending.close()
            store.close()
        stats = shipper.stats
        print(f"indexed {stats.indexed}, already there {stats.conflicts}, "
              f"dead letters {stats.dead_lettered}")

    asyncio.run(run())
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    with reader(settings(args)) as store:
        letters = store.dead_letters(args.limit)
    return listing(letters, args.json, "no dead letters",
                   lambda d: f"#{d['seq']} {d['event_id']} HTTP {d['status']} "
                             f"{d['error_type']}: {d['reason'][:200]}")


def cmd_dlq_show(args: argparse.Namespace) -> int:
    with reader(settings(args)) as store:
        letter = store.dead_letter(args.seq)
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
    config = settings(args)
    before = _dead_count(config)
    _apply(config, requeue_dead(None if args.all else [args.seq], doc))
    moved = before - _dead_count(config)
    print(f"{moved} dead letter(s) pending again; the shipper sends them next")
    return 0 if moved else 1


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    from ingest.settings import parse_duration
    from ingest.store import purge_dead

    config = settings(args)
    cutoff = None
    if args.older_than:
        try:
            age = parse_duration(args.older_than)
        except ValueError as exc:
            raise ConfigError(f"--older-than: {exc}") from None
        cutoff = int((time.time() - age.total_seconds()) * 1000)
    before = _dead_count(config)
    _apply(config, purge_dead(cutoff))
    print(f"{before - _dead_count(config)} dead letter(s) deleted")
    return 0


def _dead_count(config: Settings) -> int:
    with reader(config) as store:
        return store.counts()["dead"]


def _apply(config: Settings, op: Any) -> None:
    from ingest.app import build_store

    async def run() -> None:
        store = build_store(config)
        store.start()
        try:
            await store.apply(op)
        finally:
            store.close()

    asyncio.run(run())
