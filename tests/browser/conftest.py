"""Options for the browser tests: where to keep a copy of the dashboard's screenshot."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ui-screenshot", default=None, metavar="PNG",
                     help="also save the dashboard screenshot here (docs/ui.png for the README)")
