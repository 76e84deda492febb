"""Report benchmark: each question over 1,000,000 stored events (7 days), median of 3 runs.

    python bench/report_bench.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest import records
from ingest.answers import reports
from ingest.receive.prices import PriceBook
from ingest.sample import sample_event
from ingest.store import Reader
from ingest.testing import fill_store

DAY = 86_400_000


def fill(data: Path, count: int, now_ms: int) -> None:
    """`count` sample events with timestamps spread over the last 7 days."""
    rng = random.Random(5)
    fill_store(data, (sample_event(n, rng, now_ms - rng.randint(0, 7 * DAY), "bench")
                      for n in range(count)), now_ms, PriceBook())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory(prefix="hs-report-") as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        fill(data, args.events, now)
        print(f"filled {args.events:,} events in {time.perf_counter() - started:.0f} s")
        reader = Reader(data)
        week = records.Query(now - 7 * DAY - 1, now + 1)
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("latency, 7 days", lambda: reports.latency_result(
                week, reader.latencies(week), "exact")),
            ("errors, 7 days", lambda: reports.errors_result(
                week, reader.error_counts(week), reader.top_errors(week, 3))),
            ("cost per day, 7 days", lambda: reports.cost_result(
                week, "day", reader.cost(week, "day"))),
            ("cost per day and user, 7 days", lambda: reports.cost_result(
                week, "user", reader.cost(week, "user"))),
            ("latency, one model, 7 days", lambda: reports.latency_result(
                q := records.Query(week.since_ms, week.until_ms, model="gpt-4o"),
                reader.latencies(q), "exact")),
        ]
        print(f"\n| question over {args.events:,} events | median of 3 |\n|---|---|")
        for name, run in cases:
            times = []
            for _ in range(3):
                t = time.perf_counter()
                result = run()
                times.append(time.perf_counter() - t)
            assert not reports.empty(result), name
            print(f"| {name} | {statistics.median(times):.2f} s |", flush=True)
        reader.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
