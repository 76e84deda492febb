"""holysheep-ingest: signed HolySheep relay webhooks in, durable store, Elasticsearch out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("holysheep-ingest")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
