"""The commands that read answers: search, report and the quarantine listing."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

import orjson

from ingest.cli.common import cluster, listing, num, reader, settings, use_elasticsearch
from ingest.records import Query
from ingest.settings import Settings

if TYPE_CHECKING:
    from ingest.answers.catalogue import Search

REPORT_HELP = """\
The questions, answered the same way from the embedded store or from Elasticsearch:
  latency   p50/p90/p95/p99 overall and per model, and the latency-bucket split.
            The store computes exact percentiles (linear interpolation between ranks);
            Elasticsearch's are approximate (t-digest, typically within 1 % for these sizes).
  errors    per model: requests, errors (status >= 400), error rate, top error messages.
  cost      per UTC day (--by model|user to split): relay-reported and computed cost,
            prompt/completion/total tokens, requests.
An empty window says so (exit 1) instead of printing zeros."""


def cmd_search(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ingest.answers import catalogue

    config = settings(args)
    s = catalogue.search_query(event_id=args.event_id, user=args.user, trace=args.trace,
                               text=args.text, model=args.model, status=args.status,
                               since=args.since, until=args.until, limit=args.limit,
                               now=datetime.now(UTC))
    if use_elasticsearch(args.backend, config.elasticsearch_url):
        docs = asyncio.run(_search_es(config, s))
    else:
        with reader(config) as store:
            docs = catalogue.search(store, s)
    if not docs:
        print("no stored event matches", file=sys.stderr)
        return 1
    if args.json:
        out = sys.stdout.buffer
        for doc in docs:
            out.write(orjson.dumps(doc) + b"\n")
        out.flush()
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("@timestamp", "id", "model", "status", "latency ms", "tokens", "cost $",
                   "user", "error"):
        table.add_column(column, overflow="fold")
    for doc in docs:
        meta = doc.get("user_metadata") or {}
        table.add_row(
            doc.get("@timestamp", ""), str(doc.get("id", "")), str(doc.get("model") or ""),
            str(doc.get("status_code") or ""), num(doc.get("latency_ms")),
            num(doc.get("tokens_used")), num(doc.get("cost_usd")), str(meta.get("user_id") or ""),
            str((doc.get("error") or {}).get("message") or ""))
    Console().print(table)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    with reader(settings(args)) as store:
        items = store.quarantined(args.limit)
    return listing(items, args.json, "quarantine is empty",
                   lambda item: f"#{item['id']} {item['reason']}\n    {item['raw'][:300]}")


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ingest.answers import reports

    config = settings(args)
    q = reports.query(args.question, args.since, args.until, args.model, args.user,
                      datetime.now(UTC))
    if use_elasticsearch(args.backend, config.elasticsearch_url):
        result = asyncio.run(_report_es(config, args.question, q, args.by))
    else:
        from ingest.answers import catalogue

        with reader(config) as store:
            result = catalogue.answer(args.question, q, args.by, store)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        return 0
    if reports.empty(result):
        window = result["window"]
        print(f"no events between {window['since']} and {window['until']}"
              + (f" for model {args.model}" if args.model else "")
              + (f" for user {args.user}" if args.user else ""), file=sys.stderr)
        return 1
    from ingest.answers.render import render

    render(result)
    return 0


async def _search_es(config: Settings, s: Search) -> list[dict[str, Any]]:
    from ingest.answers import elasticsearch as es

    async with cluster(config) as c:
        return es.search_hits(await c.search(config.data_stream, s.body()))


async def _report_es(config: Settings, question: str, q: Query, by: str) -> dict[str, Any]:
    from ingest.answers import elasticsearch as es

    async with cluster(config) as c:
        response = await c.search(config.data_stream, es.es_body(question, q, by))
    return es.from_es(question, q, response, by)
