"""Dashboard benchmark: each /api/v1/ panel over 1,000,000 stored events, median of 5 runs.

    python bench/ui_bench.py [--events 1000000] [--data-dir DIR]

Fills a store as bench/report_bench.py does (events over 7 days), or reuses `--data-dir`
(filled there once and kept), starts a real receiver on 127.0.0.1 over it and times every
request the page makes, one at a time, then the whole page's requests together as the
browser sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: puts tests/support on the path)
import httpx
from receiver import ReceiverProcess
from report_bench import fill

from ingest.records import iso_ms

RUNS = 5
DAY = 86_400_000
PANELS = [
    ("requests and error rate per model", "/series/traffic", {}),
    ("latency p50/p95/p99 over time", "/series/latency", {}),
    ("latency per model and buckets", "/report/latency", {}),
    ("errors per model", "/report/errors", {}),
    ("cost per day by model", "/report/cost", {"by": "model"}),
    ("top users by cost", "/top-users", {"limit": "10"}),
    ("request log, newest 50", "/search", {"limit": "50"}),
    ("request log, 5xx of one model", "/search", {"limit": "50", "status": "5xx",
                                                  "model": "gpt-4o"}),
    ("request log, error text", "/search", {"limit": "50", "text": "overloaded"}),
    ("request log, one user", "/search", {"limit": "50", "user": "user_007"}),
]


def newest_ms(data: Path) -> int:
    with sqlite3.connect(data / "index.db") as conn:
        found: int = conn.execute("SELECT max(ts) FROM facts").fetchone()[0]
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def timed(http: httpx.Client, path: str, params: dict[str, str]) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        answer = http.get(path, params=params)
        times.append(time.perf_counter() - started)
        answer.raise_for_status()
    return statistics.median(times)


async def page(url: str, params: dict[str, str]) -> float:
    """Every panel's request at once, as the page sends them: the time until the last answer."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        started = time.perf_counter()
        answers = await asyncio.gather(*(http.get(path, params={**params, **extra})
                                         for _, path, extra in PANELS[:7]))
        for answer in answers:
            answer.raise_for_status()
        return time.perf_counter() - started


def run(data: Path, events: int) -> None:
    until = newest_ms(data) + 1
    windows = {"24h": until - DAY, "7d": until - 7 * DAY - 1, "30d": until - 30 * DAY}
    with ReceiverProcess(data, env={"INGEST_LOG_LEVEL": "warning"}) as receiver, \
            httpx.Client(base_url=receiver.url + "/api/v1", timeout=60) as http:
        print(f"\n| panel over {events:,} events (median of {RUNS}) | "
              + " | ".join(windows) + " |\n|---|" + "---|" * len(windows))
        for name, path, extra in PANELS:
            cells = [timed(http, path, {"since": iso_ms(since), "until": iso_ms(until),
                                        **extra}) for since in windows.values()]
            print(f"| {name} | " + " | ".join(ms(t) for t in cells) + " |", flush=True)
        cells = [statistics.median(asyncio.run(page(
            receiver.url + "/api/v1", {"since": iso_ms(since), "until": iso_ms(until)}))
            for _ in range(RUNS)) for since in windows.values()]
        print("| the whole page (its 7 requests at once) | "
              + " | ".join(ms(t) for t in cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, help="fill here once, reuse afterwards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hs-ui-") as tmp:
        data = args.data_dir or Path(tmp)
        if not (data / "events.db").exists():
            started = time.perf_counter()
            fill(data, args.events, int(time.time() * 1000))
            print(f"filled {args.events:,} events in {time.perf_counter() - started:.0f} s")
        run(data, args.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
