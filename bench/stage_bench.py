"""CPU per event of each step of the webhook path, in process: no HTTP, no network.

The receiver's throughput on one core is bounded by the CPU it spends per event. This times
each step the hot path takes, in order, over the same sample events the webhook benchmark
sends (100-event batches), and prints CPU microseconds per event (median of rounds) beside
the budget a target leaves: 60,000 events/s on one core is 16.7 us per event for everything.

    python bench/stage_bench.py [--rounds 5] [--events 20000]

`store` is `Store.write` with the WAL sync off (sync=normal): the inserts, the commit and the
background threads that checkpoint and fill the search tables, all counted (process CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from ingest.receive import body as events
from ingest.receive.enrich import Enricher
from ingest.receive.prices import PriceBook
from ingest.receive.signing import Secret, sign, verify
from ingest.records import Row
from ingest.sample import sample_event
from ingest.store import Budget, Store
from ingest.testing import SECRET

BATCH = 100


def cpu_us_per_event(step: Callable[[], object], count: int) -> float:
    start = time.process_time()
    step()
    return (time.process_time() - start) / count * 1e6


def one_round(count: int, seed: int, prices: PriceBook) -> dict[str, float]:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    ts = int(time.time())
    bodies = [orjson.dumps([sample_event(b * BATCH + i, rng, now_ms, f"s{seed}")
                            for i in range(BATCH)]) for b in range(count // BATCH)]
    headers = [{"x-holysheep-timestamp": str(ts), "x-holysheep-signature": sign(SECRET, ts, b)}
               for b in bodies]
    secrets = [Secret.parse(SECRET)]
    enricher = Enricher.default(prices)
    n = len(bodies) * BATCH
    out: dict[str, float] = {}

    out["verify (HMAC over the body)"] = cpu_us_per_event(
        lambda: [verify(h, b, secrets, ts, 300) for h, b in zip(headers, bodies, strict=True)],
        n)
    items: list[list[events.Item]] = []
    out["split and parse"] = cpu_us_per_event(
        lambda: items.extend(events.split(b, "json") for b in bodies), n)
    docs: list[list[dict[str, object]]] = []
    out["validate"] = cpu_us_per_event(
        lambda: docs.extend([events.validate(i.data) for i in batch if i.data is not None]
                            for batch in items), n)
    drafts = []
    out["enrich (processors)"] = cpu_us_per_event(
        lambda: drafts.extend([enricher(d, now_ms) for d in batch] for batch in docs), n)
    # `row` runs the processors and then builds the document and the row: on fresh copies of
    # the events, its own cost is what it adds to the processors.
    fresh = [[events.validate(orjson.loads(i.raw)) for i in batch] for batch in items]
    rows: list[list[Row]] = []
    whole = cpu_us_per_event(
        lambda: rows.extend([enricher.row(d, i.raw, now_ms) for d, i in zip(ds, its, strict=True)]
                            for ds, its in zip(fresh, items, strict=True)), n)
    out["document and row"] = max(0.0, whole - out["enrich (processors)"])

    work = Path(tempfile.mkdtemp(prefix="hs-stage-"))
    try:
        store = Store(work, sync="normal", budget=Budget(max_bytes=1 << 40, min_free_bytes=0))

        async def write_all() -> None:
            store.start()
            for batch in rows:
                await store.write(batch)

        out["store (insert, commit, checkpoint, index)"] = cpu_us_per_event(
            lambda: asyncio.run(write_all()), n)
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    prices = PriceBook.from_file(None)
    prices.warm(int(time.time() * 1000))
    # As the receiver runs (`ingest.app`): long-lived objects frozen, young collections rare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    rounds = [one_round(args.events, seed, prices) for seed in range(args.rounds)]
    print(f"\n| step, 100-event batches (CPU per event, median of {args.rounds}) | us |")
    print("|---|---|")
    total = 0.0
    for name in rounds[0]:
        value = statistics.median(r[name] for r in rounds)
        total += value
        print(f"| {name} | {value:.1f} |")
    print(f"| **all steps** | **{total:.1f}** |")
    print(f"| budget per event at 60,000 events/s on one core | {1e6 / 60_000:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
