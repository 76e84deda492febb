"""Realistic sample relay events for `send`, demos, tests and benchmarks."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from typing import Any

# What the relay reports per 1M tokens (prompt, completion); our own costing uses the price book.
RELAY_PRICES = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "claude-sonnet-4": (3.00, 15.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "deepseek-v3.2": (0.28, 0.42),
}
_MEDIAN_MS = {"gpt-4.1": 420, "gpt-4o": 300, "gpt-4o-mini": 90, "claude-sonnet-4": 520,
              "gemini-2.5-flash": 60, "deepseek-v3.2": 150}
_FAILURES = ((429, "rate limit exceeded for model"), (500, "upstream provider error"),
             (502, "bad gateway from upstream"), (503, "model overloaded, retry later"),
             (400, "invalid request: max_tokens too large"))


def sample_event(index: int, rng: random.Random, now_ms: int, run: str) -> dict[str, Any]:
    """One relay event; about 8 % are failures (429s, 5xx, 400s)."""
    model = rng.choice(tuple(RELAY_PRICES))
    prompt = rng.randint(20, 4000)
    completion = rng.randint(1, 1200)
    latency = round(rng.lognormvariate(0, 0.6) * _MEDIAN_MS[model], 1)
    event: dict[str, Any] = {
        "id": f"req_{run}_{index:08d}",
        "type": "holysheep_request",
        "model": model,
        "status_code": 200,
        "latency_ms": latency,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
        "user_metadata": {"user_id": f"user_{rng.randint(1, 40):03d}",
                          "trace_id": secrets.token_hex(8)},
        "timestamp": now_ms - rng.randint(0, 2000),
    }
    if rng.random() < 0.08:
        status, message = rng.choice(_FAILURES)
        event["status_code"] = status
        event["error"] = {"message": message}
        event["usage"] = {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt}
        completion = 0
    p, c = RELAY_PRICES[model]
    event["cost_usd"] = round((prompt * p + completion * c) / 1_000_000, 8)
    return event


def sample_events(count: int, seed: int | None = None,
                  now_ms: int | None = None) -> Iterator[dict[str, Any]]:
    """`count` events with ids unique to this call (a random run tag), reproducible by `seed`."""
    rng = random.Random(seed)
    run = secrets.token_hex(4) if seed is None else f"s{seed}"
    now = int(time.time() * 1000) if now_ms is None else now_ms
    for index in range(count):
        yield sample_event(index, rng, now, run)
