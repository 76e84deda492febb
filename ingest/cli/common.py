"""What the commands share: settings loaded once, backend choice, store readers, listings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ingest.settings import Settings, load

if TYPE_CHECKING:
    from ingest.elastic import Cluster
    from ingest.store import Reader

# The flags that override a setting of the same name, wherever a command has them.
_OVERRIDES = ("host", "port", "data_dir", "price_file", "log_level", "tls_cert", "tls_key")


def settings(args: argparse.Namespace) -> Settings:
    """The command's settings: the environment with its flags on top, loaded once."""
    return load(**{name: getattr(args, name, None) for name in _OVERRIDES})


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="store directory (INGEST_DATA_DIR)")


def add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["auto", "store", "elasticsearch"], default="auto",
                        help="auto: Elasticsearch when INGEST_ELASTICSEARCH_URL is set")


def use_elasticsearch(backend: str, url: str | None) -> bool:
    """`--backend auto` reads Elasticsearch when a URL is configured, else the store."""
    return backend == "elasticsearch" or (backend == "auto" and url is not None)


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def cluster(config: Settings) -> Cluster:
    """The Elasticsearch client from settings (imported only by the commands that use it)."""
    from ingest.app import es_connection
    from ingest.elastic import Cluster

    return Cluster(es_connection(config))


def reader(config: Settings) -> Reader:
    from ingest.store import Reader

    return Reader(config.data_dir)


def listing(items: list[dict[str, Any]], as_json: bool, empty: str,
             line: Callable[[dict[str, Any]], str]) -> int:
    if not items:
        print(empty, file=sys.stderr)
    for item in items:
        print(orjson.dumps(item).decode() if as_json else line(item))
    return 0


def num(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
