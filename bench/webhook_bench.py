"""Webhook receiver benchmark: wrk over pre-signed unique events vs a minimal raw-ASGI app.

The server runs pinned to CPU 0 (one worker), wrk pinned to CPU 1 with 50 connections.
Each round runs, in order: the minimal app (baseline), the receiver with single-event
requests, the receiver with 100-event batches. Accepted events/s counts rows durably stored
in the receiver's store (not responses), so duplicates or losses cannot inflate it.
With `--ceiling`, each round also runs the receiver with storage taken out
(bench/ceiling_app.py), which shows the share of the minimal app's rate that HTTP, checking
and enrichment leave before anything is stored.
Prints a Markdown table of medians; raw numbers go to bench/results/webhook.json.

    python bench/webhook_bench.py [--rounds 3] [--seconds 10] [--ceiling]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (first: puts tests/support on the path)
import httpx
import orjson
from receiver import ReceiverProcess, free_port

from ingest.receive.signing import sign
from ingest.sample import sample_event
from ingest.store import Reader
from ingest.testing import SECRET

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_presigned.lua"


def presign(path: Path, requests: int, batch: int, run: str, random_ids: bool = False) -> None:
    """Write `requests` signed bodies (each `batch` events with fresh ids) for the Lua script.

    Ids count up in arrival order unless `random_ids`: then they are random, as a relay
    that names requests by UUID sends them.
    """
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    ts = int(time.time())
    with path.open("wb") as out:
        for r in range(requests):
            events = [sample_event(r * batch + i, rng, now_ms, run) for i in range(batch)]
            if random_ids:
                for event in events:
                    event["id"] = f"req_{rng.getrandbits(128):032x}"
            body = orjson.dumps(events[0] if batch == 1 else events)
            out.write(f"{ts}\t{sign(SECRET, ts, body)}\t".encode() + body + b"\n")


def wrk(url: str, script_arg: Path, seconds: int, connections: int = 50) -> dict[str, Any]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "--timeout", "10s", "-s", str(LUA), url, "--", str(script_arg)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError("wrk printed no result:\n" + out.stdout + out.stderr)


def wait_healthy(url: str, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # readiness polling, bounded
    raise RuntimeError(f"{url} did not come up")


def run_app(command: list[str], health_path: str, requests_file: Path, seconds: int,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """An app on CPU 0 under wrk; requests/s counted from wrk's responses."""
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, *command, str(port)],
                            cwd=HERE.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}{health_path}")
        result = wrk(f"http://127.0.0.1:{port}", requests_file, seconds)
    finally:
        proc.terminate()
        proc.wait(20)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def run_minimal(requests_file: Path, seconds: int) -> dict[str, Any]:
    return run_app(["-m", "uvicorn", "bench.minimal_app:app", "--no-access-log",
                    "--no-proxy-headers", "--log-level", "warning", "--port"],
                   "/", requests_file, seconds)


def run_ceiling(requests_file: Path, seconds: int) -> dict[str, Any]:
    """The receiver with storage taken out (bench/ceiling_app.py): what the rest allows."""
    env = {**os.environ, "INGEST_WEBHOOK_SECRET": SECRET, "INGEST_MIN_FREE_DISK_BYTES": "0"}
    result = run_app([str(HERE / "ceiling_app.py")], "/healthz", requests_file, seconds, env)
    if result["non2xx"]:
        raise RuntimeError(f"the ceiling app refused {result['non2xx']} requests")
    return result


def run_receiver(work: Path, requests_file: Path, seconds: int, batch: int,
                 source: Path | None = None) -> dict[str, Any]:
    data = work / f"data-{time.monotonic_ns()}"
    env = {"INGEST_LOG_LEVEL": "warning"}
    python = None
    if source is not None:
        # -S skips the editable install's import hook, so this source tree is the one used.
        site = next(p for p in sys.path if p.endswith("site-packages"))
        env["PYTHONPATH"] = f"{source}:{site}"
        python = [sys.executable, "-S"]
    server = ReceiverProcess(data, cpu=0, env=env, python=python, cwd=source).start()
    try:
        result = wrk(server.webhook_url, requests_file, seconds)
        result["rss_peak_mib"] = server.rss_peak_kib() / 1024
        with Reader(data) as reader:  # the search tables' backlog when the load stops
            result["unindexed"] = reader.unindexed()
    finally:
        server.stop()
    reader = Reader(data)
    stored = reader.counts()["pending"]
    reader.close()
    shutil.rmtree(data, ignore_errors=True)
    result["stored"] = stored
    result["events_sent"] = result["requests"] * batch
    result["events_per_s"] = stored / (result["duration_us"] / 1e6)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--single-requests", type=int, default=250_000,
                        help="pre-signed single-event requests per round (must exceed what "
                             "the receiver can take in --seconds)")
    parser.add_argument("--batch-requests", type=int, default=5_000)
    parser.add_argument("--random-ids", action="store_true",
                        help="random event ids instead of ids in arrival order")
    parser.add_argument("--ceiling", action="store_true",
                        help="also run the receiver with storage taken out "
                             "(bench/ceiling_app.py) after the minimal app in each round")
    parser.add_argument("--receiver-src", type=Path, action="append", default=[],
                        help="run the receiver from this source tree instead (repeat to "
                             "compare versions round by round: A/B/A/B...)")
    args = parser.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("needs 2 CPUs: server on CPU 0, wrk on CPU 1", file=sys.stderr)
        return 2
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        work = Path(tmp)
        for n in range(args.rounds):
            singles, batches = work / "single.tsv", work / "batch.tsv"
            # Signed just before use: timestamps stay inside the 300 s tolerance.
            presign(singles, args.single_requests, 1, f"r{n}s{time.time_ns()}")
            minimal = run_minimal(singles, args.seconds)
            ceiling = None
            if args.ceiling:
                presign(singles, args.single_requests, 1, f"r{n}c{time.time_ns()}")
                ceiling = run_ceiling(singles, args.seconds)
                print(f"  without storage: {ceiling['rps']:.0f} req/s, ratio "
                      f"{ceiling['rps'] / minimal['rps']:.2f}", flush=True)
            for source in args.receiver_src or [None]:
                presign(singles, args.single_requests, 1, f"r{n}s{time.time_ns()}",
                        args.random_ids)
                single = run_receiver(work, singles, args.seconds, 1, source)
                presign(batches, args.batch_requests, 100, f"r{n}b{time.time_ns()}",
                        args.random_ids)
                batch = run_receiver(work, batches, max(3, args.seconds // 2), 100, source)
                rounds.append({"minimal": minimal, "single": single, "batch": batch,
                               "ceiling": ceiling, "source": str(source or "")})
                if source is not None:
                    print(f"  {source}: single {single['events_per_s']:.0f} ev/s, batch "
                          f"{batch['events_per_s']:.0f} ev/s", flush=True)
            print(f"round {n + 1}: minimal {minimal['rps']:.0f} req/s, "
                  f"single {single['events_per_s']:.0f} ev/s p99 {single['p99_us'] / 1000:.1f} ms"
                  f" (non2xx {single['non2xx']}), batch {batch['events_per_s']:.0f} ev/s, "
                  f"rss {max(single['rss_peak_mib'], batch['rss_peak_mib']):.0f} MiB",
                  flush=True)
            for kind, result in (("single", single), ("batch", batch)):
                if result["stored"] < result["events_sent"] - result["non2xx"] * (
                        1 if kind == "single" else 100):
                    print(f"WARNING: {kind}: fewer stored than acknowledged", file=sys.stderr)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "webhook.json").write_text(json.dumps(rounds, indent=2))

    if len(args.receiver_src) > 1:
        print("\n| receiver source | single events/s | batch events/s | single p99 |")
        print("|---|---|---|---|")
        for source in args.receiver_src:
            mine = [r for r in rounds if r["source"] == str(source)]
            print(f"| {source.name} "
                  f"| {statistics.median(r['single']['events_per_s'] for r in mine):,.0f} "
                  f"| {statistics.median(r['batch']['events_per_s'] for r in mine):,.0f} "
                  f"| {statistics.median(r['single']['p99_us'] for r in mine) / 1000:.1f} ms |")
        return 0

    def med(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in rounds)

    ratio = statistics.median(r["single"]["events_per_s"] / r["minimal"]["rps"] for r in rounds)
    print()
    print(f"| measure (median of {args.rounds}) | value |")
    print("|---|---|")
    print(f"| minimal raw-ASGI app, requests/s | {med('minimal', 'rps'):,.0f} |")
    print(f"| receiver, single events stored/s | {med('single', 'events_per_s'):,.0f} |")
    print(f"| receiver, single events p50 / p99 | {med('single', 'p50_us') / 1000:.1f} ms / "
          f"{med('single', 'p99_us') / 1000:.1f} ms |")
    print(f"| ratio receiver / minimal | {ratio:.2f} |")
    if args.ceiling:
        print(f"| receiver without storage (ceiling), requests/s | {med('ceiling', 'rps'):,.0f} |")
        ceiling_ratio = statistics.median(r["ceiling"]["rps"] / r["minimal"]["rps"]
                                          for r in rounds)
        print(f"| ratio without storage / minimal | {ceiling_ratio:.2f} |")
    print(f"| receiver, 100-event batches, events stored/s | {med('batch', 'events_per_s'):,.0f} |")
    print(f"| receiver, 100-event batches p99 | {med('batch', 'p99_us') / 1000:.1f} ms |")
    rss_single = max(r["single"]["rss_peak_mib"] for r in rounds)
    rss_batch = max(r["batch"]["rss_peak_mib"] for r in rounds)
    print(f"| receiver peak RSS, single / batches | {rss_single:.0f} MiB / {rss_batch:.0f} MiB |")
    print(f"| not yet in the search tables when the load stopped, single / batches | "
          f"{med('single', 'unindexed'):,.0f} / {med('batch', 'unindexed'):,.0f} events |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
