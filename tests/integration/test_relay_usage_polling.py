"""A real receiver polling a local stand-in for the relay's usage endpoint: good answers reach
/metrics; a 401, a stall past the timeout and malformed JSON are counted by reason while the
receiver stays healthy and keeps the last good values; the API key shows nowhere."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from receiver import ReceiverProcess, wait_until
from relay_usage_server import UsageServer

from ingest.testing import signed

pytestmark = pytest.mark.integration

KEY = "sk-holysheep-integration-7f3a9c1e5b"
FAILURES = "holysheep_relay_usage_poll_failures_total"


@pytest.fixture
def usage() -> Iterator[UsageServer]:
    with UsageServer() as server:
        yield server


def scrape(receiver: ReceiverProcess) -> tuple[str, dict[tuple[str, str], float]]:
    text = httpx.get(receiver.url + "/metrics", timeout=5).text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, s.labels.get("reason", ""))] = s.value
    return text, found


def value(receiver: ReceiverProcess, name: str, reason: str = "") -> float | None:
    return scrape(receiver)[1].get((name, reason))


def quota(remaining: int, total: int) -> dict[str, object]:
    return {"object": "usage", "data": {"remaining": remaining, "total": total, "unit": "tokens"}}


def test_the_receiver_polls_the_usage_endpoint_and_survives_its_failures(
        tmp_path: Path, usage: UsageServer) -> None:
    usage.answer(200, quota(2500, 10000))
    env = {"INGEST_RELAY_USAGE_URL": usage.url, "INGEST_RELAY_API_KEY": KEY,
           "INGEST_RELAY_USAGE_INTERVAL": "300ms", "INGEST_RELAY_USAGE_TIMEOUT": "200ms",
           "INGEST_RELAY_USAGE_REMAINING_FIELD": "data.remaining",
           "INGEST_RELAY_USAGE_TOTAL_FIELD": "data.total",
           # Everything the receiver and its libraries log, to show the key is in none of it.
           "INGEST_LOG_LEVEL": "debug", "NO_PROXY": "127.0.0.1"}
    receiver = ReceiverProcess(tmp_path / "data", env=env).start()
    try:
        wait_until(lambda: value(receiver, "holysheep_relay_quota_remaining") == 2500, 15,
                   "the first good answer on /metrics")
        assert value(receiver, "holysheep_relay_quota_limit") == 10000
        assert value(receiver, "holysheep_relay_usage_last_success_timestamp_seconds")

        for reason, make_it_fail in (
                ("unauthorized", lambda: usage.answer(401, {"error": "invalid api key"})),
                ("timeout", usage.stall),
                ("malformed_json", lambda: usage.answer(200, b'{"data": {"remaining": 12'))):
            before = value(receiver, FAILURES, reason)
            assert before == 0, reason
            make_it_fail()
            # Two failed polls in a row: counted each time, logged once (checked below).
            wait_until(lambda r=reason: (value(receiver, FAILURES, r) or 0) >= 2, 15,
                       f"two {reason} failures counted")
            assert value(receiver, "holysheep_relay_quota_remaining") == 2500  # the last good
            assert httpx.get(receiver.url + "/healthz", timeout=5).status_code == 200
            assert httpx.get(receiver.url + "/readyz", timeout=5).status_code == 200
            body, headers = signed({"id": f"evt-{reason}", "model": "gpt-4o",
                                    "status_code": 200, "latency_ms": 40})
            assert httpx.post(receiver.webhook_url, content=body, headers=headers,
                              timeout=5).status_code == 202

        usage.answer(200, quota(900, 10000))
        wait_until(lambda: value(receiver, "holysheep_relay_quota_remaining") == 900, 15,
                   "the quota after the endpoint recovered")
        text, samples = scrape(receiver)
        lint(text)
        assert samples[(FAILURES, "connection")] == 0
        assert samples[(FAILURES, "missing_field")] == 0
        assert KEY not in text

        usage.stall()  # a poll in flight must not hold up the shutdown
        polls = usage.requests()
        wait_until(lambda: usage.requests() > polls, 15, "a poll held by the stall")
    finally:
        code = receiver.stop()
    # On its own after SIGTERM (uvicorn re-raises the signal once shut down), not killed, and
    # through the lifespan's end: the poller stopped, then the store closed.
    assert code in (0, -signal.SIGTERM), code
    assert "store closed" in receiver.log()
    assert set(usage.authorizations) == {f"Bearer {KEY}"}
    log = receiver.log()
    assert KEY not in log
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "relay usage poll" in line]
    assert [line.split(" relay usage poll of ", 1)[1] for line in warnings] == [
        f"{usage.url} failed (unauthorized): HTTP 401: check INGEST_RELAY_API_KEY; "
        "keeping the last good values",
        f"{usage.url} failed (timeout): no answer within 0.2 s; keeping the last good values",
        f"{usage.url} failed (malformed_json): the answer is not JSON; keeping the last good "
        "values",
        f"{usage.url} works again: 900 of 10000 remaining",
        f"{usage.url} failed (timeout): no answer within 0.2 s; keeping the last good values",
    ][:len(warnings)]
    assert len(warnings) >= 4  # the last timeout may not have been reached before the stop
    assert all(" WARNING " in line for line in warnings)


def lint(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing: .ci/run installs it (apt-get install prometheus)")
        return  # the rest of the test stands without the lint
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_receiver_without_a_usage_url_never_polls(tmp_path: Path, usage: UsageServer) -> None:
    with ReceiverProcess(tmp_path / "data", env={"INGEST_RELAY_API_KEY": ""}) as receiver:
        text, _ = scrape(receiver)
    assert "holysheep_relay_quota" not in text
    assert "holysheep_relay_usage" not in text
    assert usage.requests() == 0


def test_a_key_without_a_url_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "INGEST_WEBHOOK_SECRET": "s", "INGEST_RELAY_API_KEY": KEY}
    env.pop("INGEST_RELAY_USAGE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "serve", "--port", "0",
         "--data-dir", str(tmp_path / "d")], env=env, capture_output=True, text=True,
        timeout=60, check=False)
    assert done.returncode == 2
    assert "INGEST_RELAY_API_KEY is set but INGEST_RELAY_USAGE_URL is not" in done.stderr
    assert "Traceback" not in done.stderr
    assert KEY not in done.stderr + done.stdout
