"""The dashboard in a real headless Chromium against a real receiver with sample traffic."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from receiver import ReceiverProcess, wait_until

from ingest.sample import sample_event
from ingest.testing import signed

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
MINUTE = 60_000
CLI_TIMEOUT_S = 60
LOAD_TIMEOUT_MS = 30_000
# The page marks its body once every panel has answered (selectors: the page's CSP refuses
# the string evaluation wait_for_function would use).
LOADED = "body[data-loaded]:not([data-loaded=''])"


def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run installs it from Debian's packages")
        pytest.skip("chromium not installed (Debian package chromium); CI installs it")
    return CHROMIUM


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """A receiver holding 400 sample events from the last 50 minutes."""
    with ReceiverProcess(tmp_path_factory.mktemp("browser") / "data") as running:
        rng = random.Random(7)
        now = int(time.time() * 1000)
        events = [sample_event(n, rng, now - rng.randint(0, 50 * MINUTE), "ui")
                  for n in range(400)]
        with httpx.Client(timeout=10) as http:
            for start in range(0, len(events), 40):
                body, headers = signed(events[start:start + 40])
                assert http.post(running.webhook_url, content=body,
                                 headers=headers).status_code == 202
        yield running


def api(receiver: ReceiverProcess, path: str, **params: str) -> Any:
    """The API's answer over the page's default window, the last hour."""
    windowed = not path.startswith("/events/")
    answer = httpx.get(f"{receiver.url}/api/v1{path}",
                       params={"since": "1h", **params} if windowed else params, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def cli(receiver: ReceiverProcess, *args: str) -> list[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    done = subprocess.run([sys.executable, "-m", "ingest", *args, "--json", "--backend", "store",
                           "--data-dir", str(receiver.data_dir)], env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=path, headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


def value(page: Any, selector: str) -> str:
    found: str = page.get_attribute(selector, "data-value")
    return found


def test_the_page_shows_the_apis_and_the_clis_numbers(
        receiver: ReceiverProcess, browser: Any, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(receiver.url + "/ui/")
    page.wait_for_selector(LOADED, state="attached", timeout=LOAD_TIMEOUT_MS)
    assert page.inner_text("#status") == ""
    assert not page.is_visible("#quota")  # no usage endpoint configured: nothing to show

    # Totals: the page, the API and the CLI, over the same hour.
    errors = api(receiver, "/report/errors")
    (cli_errors,) = cli(receiver, "report", "errors", "--since", "1h")
    assert errors["total"] == cli_errors["total"]
    assert int(value(page, "#t-requests")) == errors["total"]["requests"] == 400
    assert int(value(page, "#t-errors")) == errors["total"]["errors"]
    assert float(value(page, "#t-error-rate")) == errors["total"]["error_rate"]
    latency = api(receiver, "/report/latency")
    (cli_latency,) = cli(receiver, "report", "latency", "--since", "1h")
    assert latency["overall"] == cli_latency["overall"]
    for p in ("p50", "p95", "p99"):
        assert float(value(page, f"#t-{p}")) == latency["overall"][p]
        shown_text = page.inner_text(f"#t-{p}")
        assert float(shown_text.removesuffix(" ms").replace(",", "")) == latency["overall"][p]
    shown = page.eval_on_selector_all(
        "#latency-models tbody tr", "rows => rows.map(r => [r.cells[0].textContent, "
        "...[...r.cells].slice(1).map(c => Number(c.textContent.replaceAll(',', '')))])")
    assert shown == [[m["model"], m["count"], m["p50"], m["p95"], m["p99"]]
                     for m in latency["by_model"]]
    buckets = page.eval_on_selector_all("#buckets tbody td", "cells => cells.map("
                                        "c => Number(c.dataset.value))")
    assert buckets == list(cli_latency["buckets"].values())
    (cli_cost,) = cli(receiver, "report", "cost", "--by", "model", "--since", "1h")
    assert float(value(page, "#t-cost")) == cli_cost["total"]["cost_usd"]
    assert page.locator("#c-cost rect").count() == len(cli_cost["rows"])  # one per day x model
    users = api(receiver, "/top-users", limit="10")["users"]
    shown_users = page.eval_on_selector_all(
        "#users tbody tr", "rows => rows.map(r => [r.cells[0].textContent, "
        "Number(r.cells[3].dataset.value)])")
    assert shown_users == [[u["user"], u["cost_usd"]] for u in users]
    # The charts are drawn: a line per model, three latency lines, points on them.
    assert page.locator("#c-requests path").count() == len(errors["by_model"])
    assert page.locator("#c-latency path").count() == 3

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 20_000
    keep = request.config.getoption("--ui-screenshot")
    if keep:
        shutil.copyfile(shot, keep)

    # A filter, then one document.
    model = api(receiver, "/search", status="5xx", limit="1")["events"][0]["model"]
    page.fill("#filters input[name=model]", model)
    page.select_option("#filters select[name=status]", "5xx")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("#events[data-shown*='status=5xx']", state="attached",
                           timeout=LOAD_TIMEOUT_MS)
    rows = page.eval_on_selector_all("#events tbody tr", "rows => rows.map(r => r.dataset.id)")
    found = api(receiver, "/search", model=model, status="5xx", limit="50")["events"]
    assert rows == [doc["id"] for doc in found] and rows
    assert [doc["id"] for doc in cli(receiver, "search", "--model", model, "--status", "5xx",
                                     "--since", "1h", "--limit", "50")] == rows
    statuses = page.eval_on_selector_all("#events tbody tr", "rows => rows.map("
                                         "r => r.cells[3].textContent)")
    assert all(s.startswith("5") for s in statuses)
    page.click(f"#events tbody tr[data-id='{rows[0]}']")
    page.wait_for_selector("#document[open]")
    shown_doc = orjson.loads(page.inner_text("#document-body"))
    assert shown_doc == found[0] == api(receiver, f"/events/{rows[0]}")
    assert page.inner_text("#document-title") == rows[0]
    page.click("#close")
    assert not problems, problems
    page.close()


def test_a_window_button_changes_every_panel(receiver: ReceiverProcess, browser: Any) -> None:
    page = browser.new_page()
    page.goto(receiver.url + "/ui/")
    page.wait_for_selector(LOADED, state="attached", timeout=LOAD_TIMEOUT_MS)
    first = page.get_attribute("body", "data-loaded")
    with page.expect_response(lambda r: "/api/v1/report/errors" in r.url and "since=7d" in r.url):
        page.click("#windows button[data-since='7d']")
    page.wait_for_selector(f"{LOADED}:not([data-loaded='{first}'])", state="attached",
                           timeout=LOAD_TIMEOUT_MS)
    assert page.get_attribute("#windows button[data-since='7d']", "class") == "on"
    assert int(value(page, "#t-requests")) == 400
    page.click("#windows button[data-since='custom']")
    assert page.is_visible("#custom")
    page.close()


def test_the_quota_shows_remaining_limit_and_the_last_poll_never_the_key(
        tmp_path: Path, browser: Any) -> None:
    from relay_usage_server import UsageServer

    key = "relay-key-shown-nowhere-42"
    with UsageServer() as usage:
        usage.answer(200, {"remaining": 7500, "total": 10000})
        env = {"INGEST_RELAY_USAGE_URL": usage.url, "INGEST_RELAY_API_KEY": key,
               "NO_PROXY": "127.0.0.1"}
        with ReceiverProcess(tmp_path / "data", env=env) as receiver:
            wait_until(lambda: httpx.get(receiver.url + "/api/v1/quota").json().get(
                "remaining") == 7500, 15, "the first poll")
            page = browser.new_page()
            page.goto(receiver.url + "/ui/")
            page.wait_for_selector(LOADED, state="attached", timeout=LOAD_TIMEOUT_MS)
            assert page.inner_text("#quota-value") == "7,500 / 10,000"
            assert "polled" in page.inner_text("#quota")
            assert key not in page.content()
            page.close()
