"""The `holysheep-ingest` command: its parser, and serve, send, search, quarantine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ingest import __version__
from ingest.errors import ConfigError, IngestError
from ingest.settings import load

if TYPE_CHECKING:
    from ingest.store import Reader

DESCRIPTION = """\
Receive the HolySheep relay's signed request webhooks, verify and enrich them, and keep
them durably in an embedded store (SQLite under INGEST_DATA_DIR).

Every setting is an INGEST_* environment variable; the flags below override them.
The one you must set: INGEST_WEBHOOK_SECRET (comma-separated to rotate secrets)."""

SERVE_EPILOG = """\
settings (environment):
  INGEST_WEBHOOK_SECRET         secret(s) shared with the relay, comma-separated (required)
  INGEST_DATA_DIR               store directory (default ./data)
  INGEST_HOST, INGEST_PORT      where to listen (default 127.0.0.1:8080)
  INGEST_SIGNATURE_TOLERANCE_S  allowed clock difference, both directions (default 300)
  INGEST_MAX_BODY_BYTES         body limit, also after gunzip (default 1MiB)
  INGEST_DEDUP_WINDOW           a repeated event id is stored once within it (default 72h)
  INGEST_RETENTION              local retention, at least the dedup window (default 30d)
  INGEST_MAX_STORE_BYTES        answer 503 + Retry-After above this (default 10GiB)
  INGEST_MIN_FREE_DISK_BYTES    ... or when the disk has less free, beyond what a WAL
                                checkpoint needs (default 100MiB)
  INGEST_STORE_SYNC             full (fsync each commit group, default) or normal
  INGEST_PRICE_FILE             TOML/JSON price overrides, USD per 1M tokens
  INGEST_RETRY_AFTER_S          Retry-After on 503 (default 30)
  INGEST_HEADER_TIMEOUT         a request's headers must arrive within this (default 10s)
  INGEST_BODY_TIMEOUT           ... and its body within this after them (default 30s)
  INGEST_MAX_CONNECTIONS        open connections; more get 503 at once (default 0: from
                                the descriptor limit, at most 10,000)
  INGEST_TLS_CERT, INGEST_TLS_KEY  serve HTTPS with this certificate and key (PEM)
  INGEST_RELAY_USAGE_URL        the relay's usage endpoint: poll it for the quota (off)
  INGEST_RELAY_API_KEY          relay API key for it, sent as a Bearer token, never logged
  INGEST_RELAY_USAGE_INTERVAL   how often to poll (default 60s)
  INGEST_RELAY_USAGE_TIMEOUT    limit for one poll, at most the interval (default 10s)
  INGEST_RELAY_USAGE_REMAINING_FIELD, INGEST_RELAY_USAGE_TOTAL_FIELD
                                JSON fields of the answer, dotted for nested ones
                                (default remaining, total; e.g. data.remaining)
  INGEST_UI                     serve the dashboard /ui/ and its API /api/v1/ (default on;
                                off disables both)
  INGEST_UI_TOKEN               their bearer token / login; required beyond loopback

endpoints: POST /webhooks/holysheep, GET /healthz, GET /readyz, GET /metrics,
  GET /ui/ (the dashboard), GET /api/v1/... (its JSON API)"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"holysheep-ingest: {exc.message}", file=sys.stderr)
        return 2
    except IngestError as exc:
        print(f"holysheep-ingest: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def build_parser() -> argparse.ArgumentParser:
    from ingest import cli_ops as ops

    parser = argparse.ArgumentParser(
        prog="holysheep-ingest", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the webhook receiver", epilog=SERVE_EPILOG,
        description="Run the receiver: a 2xx means the event is committed to the store.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to bind (INGEST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (INGEST_PORT, default 8080)")
    _data_dir(serve)
    serve.add_argument("--price-file", type=Path, help="price overrides (INGEST_PRICE_FILE)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help="serve HTTPS with this certificate chain (INGEST_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, metavar="PEM",
                       help="... and this private key (INGEST_TLS_KEY)")
    serve.set_defaults(func=cmd_serve)

    send = sub.add_parser(
        "send", help="sign and send sample or given events to a receiver",
        description="Sign events with INGEST_WEBHOOK_SECRET (the first one) and post them. "
        "Without --file, realistic sample traffic with unique ids is generated.")
    send.add_argument("url", help="receiver URL; a bare host:port gets /webhooks/holysheep")
    send.add_argument("--count", type=_positive, default=100, help="sample events (default 100)")
    send.add_argument("--batch", type=_positive, default=1,
                      help="events per request: 1 sends an object, more a JSON array")
    send.add_argument("--rate", type=float, help="events per second (default: as fast as it can)")
    send.add_argument("--file", type=Path, help="NDJSON file of events to send instead")
    send.add_argument("--concurrency", type=_positive, default=8, help="requests in flight")
    send.add_argument("--ndjson", action="store_true", help="send batches as NDJSON")
    send.add_argument("--gzip", action="store_true", help="gzip bodies (Content-Encoding)")
    send.add_argument("--seed", type=int, help="reproducible sample events")
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    search = sub.add_parser(
        "search", help="find stored events by id, user, trace id, error text, model, status",
        description="Search the embedded store, newest first; every filter given must match. "
        "Exits 1 when nothing matches.")
    search.add_argument("--id", dest="event_id", help="event id (exact)")
    search.add_argument("--user", help="user_metadata.user_id (exact)")
    search.add_argument("--trace", help="user_metadata.trace_id (exact)")
    search.add_argument("--text", help="substring of error.message, case-insensitive")
    search.add_argument("--model", help="model (exact)")
    search.add_argument("--status", metavar="CLASS", help="status class: 2xx, 4xx, 5xx, ...")
    search.add_argument("--since", help="event time from: relative (30m, 24h, 7d) or ISO 8601")
    search.add_argument("--until", help="event time before: relative or ISO 8601")
    search.add_argument("--limit", type=_positive, default=20, help="at most this many (20)")
    search.add_argument("--json", action="store_true", help="JSON lines of stored documents")
    _backend(search)
    _data_dir(search)
    search.set_defaults(func=cmd_search)

    report = sub.add_parser(
        "report", help="answers: latency percentiles, error rates, cost and tokens",
        description=ops.REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("question", choices=["latency", "errors", "cost"])
    report.add_argument("--since", help="relative (30m, 24h, 7d) or ISO 8601; default 24h for "
                        "latency, 1h for errors, 7d for cost")
    report.add_argument("--until", help="relative or ISO 8601 (default: now)")
    report.add_argument("--model", help="only this model")
    report.add_argument("--user", help="only this user_metadata.user_id")
    report.add_argument("--by", choices=["day", "model", "user"], default="day",
                        help="cost: one row per day, or per day and model/user")
    _backend(report)
    report.add_argument("--json", action="store_true", help="machine-readable, stable keys")
    _data_dir(report)
    report.set_defaults(func=ops.cmd_report)

    setup = sub.add_parser(
        "setup", help="install the ILM policy, templates and data stream in Elasticsearch",
        description="Idempotent: a second run changes nothing. Exits 1 when the cluster is "
        "unreachable, refuses the credentials or runs another major version than the client.")
    setup.add_argument("--dry-run", action="store_true", help="say what would change, change "
                       "nothing")
    setup.add_argument("--kibana", action="store_true",
                       help="also import the data view, saved searches, Lens visualisations and "
                       "dashboard into Kibana (INGEST_KIBANA_URL; overwrite, never duplicates)")
    setup.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                       help="wait up to this long for the cluster to answer (for containers)")
    setup.set_defaults(func=ops.cmd_setup)

    ship = sub.add_parser(
        "ship", help="ship pending events to Elasticsearch (serve does this when a URL is set)",
        description="Run the shipper on its own, for instance when serve runs without "
        "INGEST_ELASTICSEARCH_URL. Bulk create with the event id as _id: never a duplicate.")
    ship.add_argument("--once", action="store_true", help="exit when nothing is pending")
    _data_dir(ship)
    ship.set_defaults(func=ops.cmd_ship)

    dlq = sub.add_parser(
        "dlq", help="events Elasticsearch refused for good: list, show, replay, purge",
        description="Dead letters keep the event, the error type and reason, the target and "
        "the time. Fix the cause (mapping, template, or the document with --doc), then replay.")
    dlq_sub = dlq.add_subparsers(title="actions", metavar="ACTION", required=True)
    dlq_list = dlq_sub.add_parser("list", help="newest first")
    dlq_list.add_argument("--limit", type=_positive, default=20)
    dlq_list.add_argument("--json", action="store_true", help="JSON lines")
    dlq_list.set_defaults(func=ops.cmd_dlq_list)
    dlq_show = dlq_sub.add_parser("show", help="one dead letter with its document and raw event")
    dlq_show.add_argument("seq", type=int)
    dlq_show.set_defaults(func=ops.cmd_dlq_show)
    dlq_replay = dlq_sub.add_parser("replay", help="make dead letters pending again")
    target = dlq_replay.add_mutually_exclusive_group(required=True)
    target.add_argument("seq", type=int, nargs="?", help="one dead letter")
    target.add_argument("--all", action="store_true", help="every dead letter")
    dlq_replay.add_argument("--doc", type=Path, help="replace the document (JSON file) first; "
                            "with one SEQ only")
    dlq_replay.set_defaults(func=ops.cmd_dlq_replay)
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters for good")
    age = dlq_purge.add_mutually_exclusive_group(required=True)
    age.add_argument("--older-than", metavar="DURATION", help="failed longer ago than this (7d)")
    age.add_argument("--all", action="store_true")
    dlq_purge.set_defaults(func=ops.cmd_dlq_purge)
    for action in (dlq_list, dlq_show, dlq_replay, dlq_purge):
        _data_dir(action)

    quarantine = sub.add_parser(
        "quarantine", help="list events refused as invalid, with their bytes and reason",
        description="Invalid events are never dropped: they are kept with the reason.")
    quarantine.add_argument("--limit", type=_positive, default=20)
    quarantine.add_argument("--json", action="store_true", help="JSON lines")
    _data_dir(quarantine)
    quarantine.set_defaults(func=cmd_quarantine)
    return parser


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="store directory (INGEST_DATA_DIR)")


def _backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["auto", "store", "elasticsearch"], default="auto",
                        help="auto: Elasticsearch when INGEST_ELASTICSEARCH_URL is set")


def use_elasticsearch(backend: str, url: str | None) -> bool:
    """`--backend auto` reads Elasticsearch when a URL is configured, else the store."""
    return backend == "elasticsearch" or (backend == "auto" and url is not None)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def cmd_serve(args: argparse.Namespace) -> int:
    from ingest.app import build_store, create_app
    from ingest.metrics import Metrics
    from ingest.server import serve, tls_files

    settings = load(host=args.host, port=args.port, data_dir=args.data_dir,
                    price_file=args.price_file, log_level=args.log_level,
                    tls_cert=args.tls_cert, tls_key=args.tls_key)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = Metrics()
    app = create_app(settings, metrics=metrics)
    # Fail here with one clear line rather than inside the server's startup with a traceback;
    # read-only, so a full disk is no reason not to start (the store answers 503 meanwhile).
    scheme = "https" if tls_files(settings) else "http"
    build_store(settings).check()
    logging.getLogger("ingest").info(
        "listening on %s://%s:%d/webhooks/holysheep, store %s, %d secret(s)", scheme,
        settings.host, settings.port, settings.data_dir, len(settings.webhook_secret))
    if settings.ui:
        logging.getLogger("ingest").info(
            "dashboard on %s://%s:%d/ui/ (%s)", scheme, settings.host, settings.port,
            "token required" if settings.ui_token else "open on loopback")
    serve(app, settings, metrics)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from ingest.sample import sample_events
    from ingest.sender import send

    settings = load()
    secret = settings.secrets()[0]
    url = webhook_url(args.url)
    events: Any
    if args.file:
        try:
            lines = [ln for ln in args.file.read_bytes().splitlines() if ln.strip()]
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
        events, total = lines, len(lines)
    else:
        events, total = sample_events(args.count, seed=args.seed), args.count
    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=args.quiet) as progress:
        task = progress.add_task("sending", total=total)
        summary = asyncio.run(send(
            url, secret, events, batch_size=args.batch, concurrency=args.concurrency,
            rate=args.rate, ndjson=args.ndjson, gzip=args.gzip,
            on_progress=lambda n: progress.advance(task, n)))
    table = Table(title=f"{summary.events} events in {summary.requests} requests, "
                        f"{summary.seconds:.2f} s")
    table.add_column("status")
    table.add_column("requests", justify="right")
    for status, count in sorted(summary.statuses.items()):
        table.add_row(str(status), str(count))
    for failure, count in sorted(summary.failures.items()):
        table.add_row(failure, str(count))
    console.print(table)
    console.print(f"accepted {summary.accepted}, duplicates {summary.duplicates}, "
                  f"quarantined {summary.quarantined}")
    return 0 if summary.ok else 1


def webhook_url(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/webhooks/holysheep"
    return url


async def _search_es(settings: Any, s: Any) -> list[dict[str, Any]]:
    from ingest import reports
    from ingest.sink import ElasticsearchSink, connection

    async with ElasticsearchSink(connection(settings)) as sink:
        answer = await sink.search(settings.data_stream, s.body())
    return reports.search_hits(answer)


def _reader(data_dir: Path | None) -> Reader:
    from ingest.store import Reader

    return Reader(load(data_dir=data_dir).data_dir)


def cmd_search(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ingest import reports

    settings = load(data_dir=args.data_dir)
    s = reports.search_query(event_id=args.event_id, user=args.user, trace=args.trace,
                             text=args.text, model=args.model, status=args.status,
                             since=args.since, until=args.until, limit=args.limit,
                             now=datetime.now(UTC))
    if use_elasticsearch(args.backend, settings.elasticsearch_url):
        docs = asyncio.run(_search_es(settings, s))
    else:
        with _reader(args.data_dir) as reader:
            docs = reports.search(reader, s)
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
            str(doc.get("status_code") or ""), _num(doc.get("latency_ms")),
            _num(doc.get("tokens_used")), _num(doc.get("cost_usd")), str(meta.get("user_id") or ""),
            str((doc.get("error") or {}).get("message") or ""))
    Console().print(table)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    with _reader(args.data_dir) as reader:
        items = reader.quarantined(args.limit)
    return _listing(items, args.json, "quarantine is empty",
                    lambda item: f"#{item['id']} {item['reason']}\n    {item['raw'][:300]}")


def _listing(items: list[dict[str, Any]], as_json: bool, empty: str,
             line: Callable[[dict[str, Any]], str]) -> int:
    if not items:
        print(empty, file=sys.stderr)
    for item in items:
        print(orjson.dumps(item).decode() if as_json else line(item))
    return 0


def _num(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
