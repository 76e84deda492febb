"""Durations as users write them (`500ms`, `10s`, `15m`, `72h`, `30d`, `2w`): one grammar."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)
HINT = "use a number with a unit: 500ms, 10s, 15m, 72h, 30d, 2w"


def parse(text: str, *, unit_required: bool = False) -> timedelta:
    """`30d` -> 30 days; a bare number is seconds unless `unit_required`. ValueError else."""
    match = _DURATION.fullmatch(text)
    if not match or (unit_required and match.group(2) is None):
        raise ValueError(HINT)
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[(unit or "s").lower()])


def coerce(value: Any) -> Any:
    """For settings: text is parsed, a number is seconds, anything else is left to pydantic."""
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def shown(value: timedelta) -> str:
    """A duration the way a user would write it: `72h` rather than `3d`, `60s` rather than `1m`."""
    seconds = value.total_seconds()
    if seconds % 86400 == 0 and seconds >= 7 * 86400:
        return f"{int(seconds // 86400)}d"
    if seconds % 3600 == 0 and seconds >= 7200:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0 and seconds >= 600:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
