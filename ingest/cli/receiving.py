"""The commands that touch the receiver: serve it, and send it signed events."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from ingest.cli.common import settings
from ingest.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    from ingest.app import build_store, create_app, server_options
    from ingest.metrics import Metrics
    from ingest.receive.server import serve

    config = settings(args)
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = Metrics()
    app = create_app(config, metrics=metrics)
    # Fail here with one clear line rather than inside the server's startup with a traceback;
    # read-only, so a full disk is no reason not to start (the store answers 503 meanwhile).
    listen, limits = server_options(config)
    build_store(config).check()
    logging.getLogger("ingest").info(
        "listening on %s://%s:%d/webhooks/holysheep, store %s, %d secret(s)",
        "https" if listen.tls else "http", config.host, config.port, config.data_dir,
        len(config.webhook_secret))
    if config.ui:
        logging.getLogger("ingest").info(
            "dashboard on %s://%s:%d/ui/ (%s)", "https" if listen.tls else "http", config.host,
            config.port, "token required" if config.ui_token else "open on loopback")
    serve(app, listen, limits, metrics)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from ingest.sample import sample_events
    from ingest.sender import send

    secret = settings(args).secrets()[0]
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


