"""The argument parser and `main`: every command, its flags and its help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ingest import __version__
from ingest.cli import answers, receiving, shipping
from ingest.cli.common import add_backend, add_data_dir, positive
from ingest.errors import ConfigError, IngestError
from ingest.settings import serve_epilog

DESCRIPTION = """\
Receive the HolySheep relay's signed request webhooks, verify and enrich them, and keep
them durably in an embedded store (SQLite under INGEST_DATA_DIR).

Every setting is an INGEST_* environment variable; the flags below override them.
The one you must set: INGEST_WEBHOOK_SECRET (comma-separated to rotate secrets)."""

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
    parser = argparse.ArgumentParser(
        prog="holysheep-ingest", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the webhook receiver", epilog=serve_epilog(),
        description="Run the receiver: a 2xx means the event is committed to the store.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="address to bind (INGEST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (INGEST_PORT, default 8080)")
    add_data_dir(serve)
    serve.add_argument("--price-file", type=Path, help="price overrides (INGEST_PRICE_FILE)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help="serve HTTPS with this certificate chain (INGEST_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, metavar="PEM",
                       help="... and this private key (INGEST_TLS_KEY)")
    serve.set_defaults(func=receiving.cmd_serve)

    send = sub.add_parser(
        "send", help="sign and send sample or given events to a receiver",
        description="Sign events with INGEST_WEBHOOK_SECRET (the first one) and post them. "
        "Without --file, realistic sample traffic with unique ids is generated.")
    send.add_argument("url", help="receiver URL; a bare host:port gets /webhooks/holysheep")
    send.add_argument("--count", type=positive, default=100, help="sample events (default 100)")
    send.add_argument("--batch", type=positive, default=1,
                      help="events per request: 1 sends an object, more a JSON array")
    send.add_argument("--rate", type=float, help="events per second (default: as fast as it can)")
    send.add_argument("--file", type=Path, help="NDJSON file of events to send instead")
    send.add_argument("--concurrency", type=positive, default=8, help="requests in flight")
    send.add_argument("--ndjson", action="store_true", help="send batches as NDJSON")
    send.add_argument("--gzip", action="store_true", help="gzip bodies (Content-Encoding)")
    send.add_argument("--seed", type=int, help="reproducible sample events")
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=receiving.cmd_send)

    search = sub.add_parser(
        "search", help="find stored events by id, user, trace id, error text, model, status",
        description="Search the embedded store, newest first; every filter given must match. "
        "Exits 1 when nothing matches.")
    search.add_argument("--id", dest="event_id", help="event id (exact)")
    search.add_argument("--user", help="user_metadata.user_id (exact)")
    search.add_argument("--trace", help="user_metadata.trace_id (exact)")
    search.add_argument("--text", help="substring of error.message, case-insensitive")
    search.add_argument("--model", help="model (exact)")
    search.add_argument("--status", metavar="CLASS",
                        help="status class: 2xx, 4xx, 5xx, ... or 429 (apart from 4xx)")
    search.add_argument("--since", help="event time from: relative (30m, 24h, 7d) or ISO 8601")
    search.add_argument("--until", help="event time before: relative or ISO 8601")
    search.add_argument("--limit", type=positive, default=20, help="at most this many (20)")
    search.add_argument("--json", action="store_true", help="JSON lines of stored documents")
    add_backend(search)
    add_data_dir(search)
    search.set_defaults(func=answers.cmd_search)

    report = sub.add_parser(
        "report", help="answers: latency percentiles, error rates, cost and tokens",
        description=answers.REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("question", choices=["latency", "errors", "cost"])
    report.add_argument("--since", help="relative (30m, 24h, 7d) or ISO 8601; default 24h for "
                        "latency, 1h for errors, 7d for cost")
    report.add_argument("--until", help="relative or ISO 8601 (default: now)")
    report.add_argument("--model", help="only this model")
    report.add_argument("--user", help="only this user_metadata.user_id")
    report.add_argument("--by", choices=["day", "model", "user"], default="day",
                        help="cost: one row per day, or per day and model/user")
    add_backend(report)
    report.add_argument("--json", action="store_true", help="machine-readable, stable keys")
    add_data_dir(report)
    report.set_defaults(func=answers.cmd_report)

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
    setup.set_defaults(func=shipping.cmd_setup)

    ship = sub.add_parser(
        "ship", help="ship pending events to Elasticsearch (serve does this when a URL is set)",
        description="Run the shipper on its own, for instance when serve runs without "
        "INGEST_ELASTICSEARCH_URL. Bulk create with the event id as _id: never a duplicate.")
    ship.add_argument("--once", action="store_true", help="exit when nothing is pending")
    add_data_dir(ship)
    ship.set_defaults(func=shipping.cmd_ship)

    dlq = sub.add_parser(
        "dlq", help="events Elasticsearch refused for good: list, show, replay, purge",
        description="Dead letters keep the event, the error type and reason, the target and "
        "the time. Fix the cause (mapping, template, or the document with --doc), then replay.")
    dlq_sub = dlq.add_subparsers(title="actions", metavar="ACTION", required=True)
    dlq_list = dlq_sub.add_parser("list", help="newest first")
    dlq_list.add_argument("--limit", type=positive, default=20)
    dlq_list.add_argument("--json", action="store_true", help="JSON lines")
    dlq_list.set_defaults(func=shipping.cmd_dlq_list)
    dlq_show = dlq_sub.add_parser("show", help="one dead letter with its document and raw event")
    dlq_show.add_argument("seq", type=int)
    dlq_show.set_defaults(func=shipping.cmd_dlq_show)
    dlq_replay = dlq_sub.add_parser("replay", help="make dead letters pending again")
    target = dlq_replay.add_mutually_exclusive_group(required=True)
    target.add_argument("seq", type=int, nargs="?", help="one dead letter")
    target.add_argument("--all", action="store_true", help="every dead letter")
    dlq_replay.add_argument("--doc", type=Path, help="replace the document (JSON file) first; "
                            "with one SEQ only")
    dlq_replay.set_defaults(func=shipping.cmd_dlq_replay)
    dlq_purge = dlq_sub.add_parser("purge", help="delete dead letters for good")
    age = dlq_purge.add_mutually_exclusive_group(required=True)
    age.add_argument("--older-than", metavar="DURATION", help="failed longer ago than this (7d)")
    age.add_argument("--all", action="store_true")
    dlq_purge.set_defaults(func=shipping.cmd_dlq_purge)
    for action in (dlq_list, dlq_show, dlq_replay, dlq_purge):
        add_data_dir(action)

    quarantine = sub.add_parser(
        "quarantine", help="list events refused as invalid, with their bytes and reason",
        description="Invalid events are never dropped: they are kept with the reason.")
    quarantine.add_argument("--limit", type=positive, default=20)
    quarantine.add_argument("--json", action="store_true", help="JSON lines")
    add_data_dir(quarantine)
    quarantine.set_defaults(func=answers.cmd_quarantine)
    return parser
