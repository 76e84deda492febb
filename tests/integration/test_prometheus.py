"""/metrics of a running receiver: exact relay counts, promtool's lint, a real Prometheus scrape."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from receiver import ReceiverProcess, free_port

from ingest.sender import request_for
from ingest.testing import SECRET

pytestmark = pytest.mark.integration


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: .ci/run installs it from Debian's packages")
        pytest.skip(f"{name} not installed (Debian package prometheus); CI installs it")
    return found


def event(n: int, model: str, status: int, latency_ms: float) -> dict[str, object]:
    return {"id": f"evt-{n}", "model": model, "status_code": status, "latency_ms": latency_ms,
            "usage": {"prompt_tokens": 100, "completion_tokens": 10},
            "cost_usd": 0.001, "timestamp": int(time.time() * 1000)}


MIX = [
    event(1, "gpt-4o", 200, 40), event(2, "gpt-4o", 200, 40), event(3, "gpt-4o", 200, 90),
    event(4, "gpt-4o", 429, 300), event(5, "gpt-4o", 429, 300),
    event(6, "claude-sonnet-4", 503, 2000),
]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    with ReceiverProcess(tmp_path / "data") as server:
        for start in (0, 3):
            batch = [orjson.dumps(e) for e in MIX[start:start + 3]]
            body, headers = request_for(batch, SECRET)
            assert httpx.post(server.webhook_url, content=body, headers=headers).status_code == 202
        # A relay retry of event 1: stored once, counted once.
        body, headers = request_for([orjson.dumps(MIX[0])], SECRET)
        assert httpx.post(server.webhook_url, content=body, headers=headers).json()[
            "duplicates"] == 1
        yield server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_metrics_count_the_known_mix_exactly(receiver: ReceiverProcess) -> None:
    text = httpx.get(receiver.url + "/metrics").text
    got = samples(text)

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert value("holysheep_relay_requests_total", model="gpt-4o", status_class="2xx") == 3
    assert value("holysheep_relay_requests_total", model="gpt-4o", status_class="429") == 2
    assert value("holysheep_relay_requests_total", model="claude-sonnet-4",
                 status_class="5xx") == 1
    assert value("holysheep_relay_latency_seconds_bucket", model="gpt-4o", le="0.05") == 2
    assert value("holysheep_relay_latency_seconds_bucket", model="gpt-4o", le="0.1") == 3
    assert value("holysheep_relay_latency_seconds_bucket", model="gpt-4o", le="0.25") == 3
    assert value("holysheep_relay_latency_seconds_bucket", model="gpt-4o", le="0.5") == 5
    assert value("holysheep_relay_latency_seconds_count", model="gpt-4o") == 5
    assert value("holysheep_relay_latency_seconds_bucket", model="claude-sonnet-4",
                 le="1.0") == 0
    assert value("holysheep_relay_latency_seconds_bucket", model="claude-sonnet-4",
                 le="2.5") == 1
    assert value("holysheep_relay_tokens_total", model="gpt-4o", kind="prompt") == 500
    assert value("holysheep_relay_cost_usd_total", model="gpt-4o", source="relay") == \
        pytest.approx(0.005)
    assert value("ingest_webhooks_total", outcome="accepted", reason="") == 6
    assert value("ingest_webhooks_total", outcome="duplicate", reason="") == 1


def test_promtool_accepts_the_exposition(receiver: ReceiverProcess) -> None:
    promtool = tool("promtool")
    text = httpx.get(receiver.url + "/metrics").text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_real_prometheus_scrapes_the_receiver(receiver: ReceiverProcess,
                                                tmp_path: Path) -> None:
    prometheus = tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: holysheep-ingest\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{receiver.port}']}}]\n")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query"
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(query, params={
                    "query": 'holysheep_relay_requests_total{job="holysheep-ingest"}'}).json()
                result = answer["data"]["result"]
                if result:
                    break
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.2)  # waiting for the first scrape, bounded by the deadline
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        by_labels = {(r["metric"]["model"], r["metric"]["status_class"]): float(r["value"][1])
                     for r in result}  # type: ignore[index]
        assert by_labels == {("gpt-4o", "2xx"): 3.0, ("gpt-4o", "429"): 2.0,
                             ("claude-sonnet-4", "5xx"): 1.0}
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_store_gauges_follow_the_store(receiver: ReceiverProcess) -> None:
    from receiver import wait_until

    def pending() -> float | None:
        got = samples(httpx.get(receiver.url + "/metrics").text)
        return got.get(("ingest_store_events", (("state", "pending"),)))

    # Counted off the event loop every 10 s: the six distinct events show up within one turn.
    wait_until(lambda: pending() == 6, 25, "ingest_store_events to count the stored events")
    got = samples(httpx.get(receiver.url + "/metrics").text)
    assert got[("ingest_store_events", (("state", "dead"),))] == 0
    assert ("ingest_shipping_lag_seconds", ()) not in got  # no sink configured, no lag
