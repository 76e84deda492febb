"""Where the shipped asset folders are: the source tree, else the copy installed under `share/`."""

from __future__ import annotations

import sys
from pathlib import Path

from ingest.errors import ConfigError

_SOURCE_TREE = Path(__file__).resolve().parent.parent
_INSTALLED = Path(sys.prefix) / "share" / "holysheep-ingest"


def asset_path(folder: str, probe: str, what: str) -> Path:
    """The `folder` (elasticsearch, kibana) that holds `probe`; ConfigError naming `what` else.

    The file check matters: beside an installed package sits the client's own `elasticsearch`.
    """
    for base in (_SOURCE_TREE / folder, _INSTALLED / folder):
        if (base / probe).is_file():
            return base
    raise ConfigError(f"the {what} are not installed")
