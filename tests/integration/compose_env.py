"""The compose tests' view of .env.example: its values, and dummy secrets to fill it."""

from __future__ import annotations

from pathlib import Path

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def example_values() -> dict[str, str]:
    """KEY=value lines of .env.example, in order."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def dummy(key: str) -> str:
    return f"Dummy{key.title().replace('_', '')}0123"
