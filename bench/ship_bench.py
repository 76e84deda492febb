"""Shipping benchmark: store -> shipper -> a loopback `_bulk` endpoint, shipper on one core.

1. Instant endpoint: events shipped per second (median of rounds), shipper pinned to CPU 0,
   endpoint (bench/bulk_endpoint.py under uvicorn) pinned to CPU 1.
2. Endpoint delaying every bulk by 500 ms: throughput should follow
   concurrency x batch / 0.5 s, and resident memory should stay flat while a large backlog
   waits (sampled during the run).

    python bench/ship_bench.py [--events 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (first: puts tests/support on the path)
import httpx
from receiver import free_port

from ingest.app import build_store
from ingest.elastic import Connection
from ingest.metrics import Metrics
from ingest.sample import sample_events
from ingest.settings import load
from ingest.ship.elasticsearch import ElasticsearchSink
from ingest.ship.shipper import Shipper
from ingest.store import Reader
from ingest.testing import fill_store

HERE = Path(__file__).resolve().parent


def fill(data: Path, count: int) -> None:
    """A store with `count` pending events, written through the normal store path."""
    fill_store(data, sample_events(count, seed=1), int(time.time() * 1000))


def endpoint(delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-m", "uvicorn", "bench.bulk_endpoint:app",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        cwd=HERE.parent, env={**os.environ, "BULK_DELAY_S": str(delay)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.05)  # readiness polling, bounded
    proc.kill()
    raise RuntimeError("bulk endpoint did not start")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ship(data: Path, url: str, concurrency: int, batch: int,
         sample_rss: bool = False) -> tuple[int, float, list[float]]:
    settings = load(data_dir=data, webhook_secret="x", min_free_disk_bytes=0,
                    elasticsearch_url=url)
    samples: list[float] = []

    async def run() -> tuple[int, float]:
        store = build_store(settings)
        store.start()
        reader = Reader(data)
        sink = ElasticsearchSink(Connection(url))
        shipper = Shipper(store, reader, sink, index=settings.data_stream, batch_docs=batch,
                          concurrency=concurrency, idle_poll=0.01,
                          on_bulk=Metrics().bulk_done)
        sampler = None
        if sample_rss:
            async def sample() -> None:
                while True:
                    samples.append(rss_mib())
                    await asyncio.sleep(0.25)
            sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await shipper.drain(timeout=600)
        elapsed = time.perf_counter() - started
        if sampler:
            sampler.cancel()
        await sink.close()
        reader.close()
        store.close()
        return shipper.stats.indexed, elapsed

    shipped, elapsed = asyncio.run(run())
    return shipped, elapsed, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-events", type=int, default=30_000,
                        help="backlog for the 500 ms runs (they take events / expected rate)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="hs-ship-") as tmp:
        template = Path(tmp) / "template"
        fill(template, args.events)
        small = Path(tmp) / "small"
        fill(small, args.slow_events)
        rates = []
        proc, url = endpoint(0)
        try:
            for n in range(args.rounds):
                data = Path(tmp) / f"r{n}"
                shutil.copytree(template, data)
                shipped, elapsed, _ = ship(data, url, concurrency=2, batch=1000)
                assert shipped == args.events, (shipped, args.events)
                rates.append(shipped / elapsed)
                print(f"round {n + 1}: {shipped} events in {elapsed:.2f} s = "
                      f"{shipped / elapsed:,.0f} events/s", flush=True)
                shutil.rmtree(data)
        finally:
            proc.terminate()
            proc.wait(10)
        print(f"\n| instant endpoint, events shipped/s (median of {args.rounds}, one core) | "
              f"{statistics.median(rates):,.0f} |\n")
        proc, url = endpoint(0.5)
        print("| endpoint +500 ms per bulk: concurrency x batch | expected/s | measured/s | "
              "RSS first / peak / last |")
        print("|---|---|---|---|")
        try:
            for concurrency, batch in ((1, 1000), (2, 1000), (4, 1000), (4, 2000)):
                data = Path(tmp) / f"d{concurrency}-{batch}"
                shutil.copytree(small, data)
                shipped, elapsed, rss = ship(data, url, concurrency, batch, sample_rss=True)
                expected = concurrency * batch / 0.5
                print(f"| {concurrency} x {batch} | {expected:,.0f} | {shipped / elapsed:,.0f} | "
                      f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} MiB |", flush=True)
                shutil.rmtree(data)
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
