"""The webhook while the dashboard is in use: single events under wrk, with and without
the page's requests running back to back against the same 1,000,000-event store.

    python bench/ui_load_bench.py [--events 1000000] [--data-dir DIR] [--rounds 3]

The receiver runs pinned to CPU 0 and wrk to CPU 1 (50 connections, as bench/webhook_bench.py
does). Each round runs the webhook load twice on the same store, alone and with a client
reloading the whole page (its 7 panel requests at once, 24h window) as fast as the answers
come, which is far more than a person with auto-refresh asks for. Prints a Markdown table of
medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (first: puts tests/support on the path)
from receiver import ReceiverProcess
from report_bench import fill
from ui_bench import DAY, newest_ms, page
from webhook_bench import presign, wrk

from ingest.records import iso_ms


def loaded(receiver: ReceiverProcess, requests: Path, seconds: int,
           with_page: bool) -> dict[str, Any]:
    """wrk's result over `seconds`, and how many whole pages were answered meanwhile."""
    stop = threading.Event()
    pages: list[float] = []

    def reload() -> None:
        until = int(time.time() * 1000)
        window = {"since": iso_ms(until - DAY), "until": iso_ms(until)}
        while not stop.is_set():
            pages.append(asyncio.run(page(receiver.url + "/api/v1", window)))

    poller = threading.Thread(target=reload, daemon=True)
    if with_page:
        poller.start()
    try:
        result = wrk(receiver.webhook_url, requests, seconds)
    finally:
        stop.set()
        if with_page:
            poller.join(60)
    result["events_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    result["pages"] = len(pages)
    result["page_s"] = statistics.median(pages) if pages else None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, help="fill here once, reuse afterwards")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--single-requests", type=int, default=200_000)
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="hs-ui-load-") as tmp:
        data = args.data_dir or Path(tmp) / "data"
        if not (data / "events.db").exists():
            fill(data, args.events, int(time.time() * 1000))
        print(f"store: {args.events:,} events, newest at {iso_ms(newest_ms(data))}")
        requests = Path(tmp) / "single.tsv"
        with ReceiverProcess(data, cpu=0, env={"INGEST_LOG_LEVEL": "warning"}) as receiver:
            for n in range(args.rounds):
                for with_page in (False, True):
                    # Signed just before use: timestamps stay inside the 300 s tolerance.
                    presign(requests, args.single_requests, 1, f"l{n}{with_page}{time.time_ns()}")
                    result = loaded(receiver, requests, args.seconds, with_page)
                    runs[with_page].append(result)
                    print(f"round {n + 1}, page {'on' if with_page else 'off'}: "
                          f"{result['events_per_s']:,.0f} requests/s, "
                          f"p99 {result['p99_us'] / 1000:.1f} ms, non2xx {result['non2xx']}, "
                          f"pages {result['pages']}", flush=True)
    print("\n| webhook, single events | requests/s | p50 | p99 | max | whole pages answered |")
    print("|---|---|---|---|---|---|")
    for with_page, label in ((False, "alone"), (True, "while the page reloads back to back")):
        found = runs[with_page]
        med = {key: statistics.median(r[key] for r in found)
               for key in ("events_per_s", "p50_us", "p99_us", "max_us", "pages")}
        print(f"| {label} | {med['events_per_s']:,.0f} | {med['p50_us'] / 1000:.1f} ms | "
              f"{med['p99_us'] / 1000:.1f} ms | {med['max_us'] / 1000:.0f} ms | "
              f"{med['pages']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
