"""The dashboard's JSON API against a real receiver: the CLI's answers, windows, filters, access."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from receiver import ReceiverProcess, free_port, wait_until
from relay_usage_server import UsageServer

from ingest.records import iso_ms
from ingest.sample import sample_event
from ingest.testing import SECRET, signed

pytestmark = pytest.mark.integration

HOUR = 3_600_000
EVENTS = 600
TOKEN = "dashboard-token-5f1e8c0a9b7d"
RELAY_KEY = "relay-key-a81f3c9e77d2"
CLI_TIMEOUT_S = 60


def send_spread(url: str, count: int, now_ms: int, run: str) -> list[dict[str, Any]]:
    """`count` sample events with event times spread over the three hours before `now_ms`."""
    rng = random.Random(14)
    events = [sample_event(n, rng, now_ms - rng.randint(0, 3 * HOUR), run) for n in range(count)]
    with httpx.Client(timeout=10) as http:
        for start in range(0, count, 50):
            body, headers = signed(events[start:start + 50])
            assert http.post(url, content=body, headers=headers).status_code == 202
    return events


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReceiverProcess, int]]:
    base = tmp_path_factory.mktemp("ui")
    now = int(time.time() * 1000)
    with ReceiverProcess(base / "data") as receiver:
        send_spread(receiver.webhook_url, EVENTS, now, "ui")
        yield receiver, now


@pytest.fixture
def api(traffic: tuple[ReceiverProcess, int]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=traffic[0].url + "/api/v1", timeout=30) as http:
        yield http


def window(now: int) -> dict[str, str]:
    """A fixed window around all the traffic: the API and the CLI see the same one."""
    return {"since": iso_ms(now - 4 * HOUR), "until": iso_ms(now + 60_000)}


def cli(receiver: ReceiverProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    return subprocess.run([sys.executable, "-m", "ingest", *args, "--backend", "store",
                           "--data-dir", str(receiver.data_dir)], env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, check=False)


def flags(params: dict[str, str]) -> list[str]:
    return [part for name, value in params.items() for part in (f"--{name}", value)]


@pytest.mark.parametrize(("question", "extra"), [
    ("latency", {}), ("errors", {}), ("cost", {"by": "day"}), ("cost", {"by": "model"}),
    ("cost", {"by": "user"}), ("latency", {"model": "gpt-4o"}), ("errors", {"user": "user_007"}),
    ("cost", {"by": "model", "model": "claude-sonnet-4", "user": "user_003"}),
])
def test_reports_are_the_clis_answers(api: httpx.Client, traffic: tuple[ReceiverProcess, int],
                                      question: str, extra: dict[str, str]) -> None:
    receiver, now = traffic
    params = {**window(now), **extra}
    answer = api.get(f"/report/{question}", params=params)
    assert answer.status_code == 200, answer.text
    done = cli(receiver, "report", question, "--json", *flags(params))
    assert done.returncode == 0, done.stderr
    assert answer.json() == orjson.loads(done.stdout)


@pytest.mark.parametrize("filters", [
    {}, {"status": "5xx"}, {"status": "4xx", "model": "gpt-4o"}, {"user": "user_011"},
    {"text": "RATE LIMIT"}, {"model": "gemini-2.5-flash", "status": "2xx", "limit": "7"},
    {"since": "90m"}, {"user": "user_020", "text": "upstream"},
])
def test_search_is_the_clis_search(api: httpx.Client, traffic: tuple[ReceiverProcess, int],
                                   filters: dict[str, str]) -> None:
    receiver, now = traffic
    params = {"limit": "200", **({} if "since" in filters else window(now)), **filters}
    answer = api.get("/search", params=params)
    assert answer.status_code == 200, answer.text
    found = answer.json()["events"]
    assert found, "the filters were chosen to match something"
    done = cli(receiver, "search", "--json", *flags(params))
    assert done.returncode == 0, done.stderr
    assert found == [orjson.loads(line) for line in done.stdout.splitlines()]
    for doc in found:
        if "status" in filters:
            assert str(doc["status_code"])[0] == filters["status"][0]
        if "model" in filters:
            assert doc["model"] == filters["model"]
    stamps = [doc["@timestamp"] for doc in found]
    assert stamps == sorted(stamps, reverse=True)


def test_search_by_trace_and_one_document(api: httpx.Client) -> None:
    some = api.get("/search", params={"limit": "1", "status": "5xx"}).json()["events"][0]
    trace = some["user_metadata"]["trace_id"]
    assert api.get("/search", params={"trace": trace}).json()["events"] == [some]
    assert api.get(f"/events/{some['id']}").json() == some
    missing = api.get("/events/req_not_there")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


KEYS = {
    "/report/latency": {"question", "window", "method", "overall", "by_model", "buckets"},
    "/report/errors": {"question", "window", "by_model", "total"},
    "/report/cost": {"question", "window", "by", "rows", "total"},
    "/series/traffic": {"question", "window", "step_ms", "slots", "by_model", "total"},
    "/series/latency": {"question", "window", "step_ms", "method", "slots", "count", "p50",
                        "p95", "p99"},
    "/top-users": {"question", "window", "users", "total_users"},
    "/search": {"events"},
    "/quota": {"configured"},
}


def test_keys_are_pinned(api: httpx.Client, traffic: tuple[ReceiverProcess, int]) -> None:
    params = window(traffic[1])
    for path, keys in KEYS.items():
        assert set(api.get(path, params={} if path == "/quota" else params).json()) == keys, path
    traffic_rows = api.get("/series/traffic", params=params).json()
    assert set(traffic_rows["by_model"][0]) == {"model", "requests", "errors", "error_rate"}
    assert set(traffic_rows["total"]) == {"requests", "errors", "error_rate"}
    user = api.get("/top-users", params=params).json()["users"][0]
    assert set(user) == {"user", "requests", "errors", "cost_usd", "computed_cost_usd",
                         "total_tokens"}


def span_ms(answer: dict[str, Any]) -> int:
    since, until = (datetime.fromisoformat(answer["window"][k]) for k in ("since", "until"))
    return int((until - since).total_seconds() * 1000)


def test_default_windows_are_the_clis(api: httpx.Client) -> None:
    assert span_ms(api.get("/report/latency").json()) == 24 * HOUR
    assert span_ms(api.get("/report/errors").json()) == HOUR
    assert span_ms(api.get("/report/cost").json()) == 7 * 24 * HOUR
    for path in ("/series/traffic", "/series/latency", "/top-users"):
        assert span_ms(api.get(path).json()) == 24 * HOUR, path
    assert span_ms(api.get("/report/errors", params={"since": "3h"}).json()) == 3 * HOUR


def test_the_series_add_up_to_the_reports(api: httpx.Client,
                                          traffic: tuple[ReceiverProcess, int]) -> None:
    params = window(traffic[1])
    flow = api.get("/series/traffic", params=params).json()
    errors = api.get("/report/errors", params=params).json()
    assert sum(flow["total"]["requests"]) == errors["total"]["requests"] == EVENTS
    assert sum(flow["total"]["errors"]) == errors["total"]["errors"]
    per_model = {m["model"]: (sum(m["requests"]), sum(m["errors"])) for m in flow["by_model"]}
    assert per_model == {m["model"]: (m["requests"], m["errors"]) for m in errors["by_model"]}
    assert flow["step_ms"] == 5 * 60_000 and len(flow["slots"]) == 49  # 4h 1m in 5-minute steps
    latency = api.get("/series/latency", params=params).json()
    assert sum(latency["count"]) == api.get("/report/latency", params=params).json()[
        "overall"]["count"]
    assert all(p50 is None or p50 <= p99 for p50, p99 in zip(latency["p50"], latency["p99"],
                                                              strict=True))
    fine = api.get("/series/latency", params={**params, "step": "1m"}).json()
    assert fine["step_ms"] == 60_000 and sum(fine["count"]) == sum(latency["count"])
    users = api.get("/top-users", params={**params, "limit": "1000"}).json()
    by_user = api.get("/report/cost", params={**params, "by": "user"}).json()
    spent: dict[str, float] = {}
    for row in by_user["rows"]:
        spent[row["user"]] = spent.get(row["user"], 0) + row["cost_usd"]
    assert {u["user"]: pytest.approx(u["cost_usd"], abs=1e-5) for u in users["users"]} == spent
    costs = [u["cost_usd"] for u in users["users"]]
    assert costs == sorted(costs, reverse=True)
    assert len(api.get("/top-users", params={**params, "limit": "3"}).json()["users"]) == 3


def test_an_empty_window_answers_zeros_not_errors(api: httpx.Client) -> None:
    past = {"since": "2020-01-01T00:00:00Z", "until": "2020-01-01T06:00:00Z"}
    latency = api.get("/report/latency", params=past).json()
    assert latency["overall"] == {"count": 0, "p50": None, "p90": None, "p95": None, "p99": None}
    assert latency["by_model"] == [] and set(latency["buckets"].values()) == {0}
    assert api.get("/report/errors", params=past).json()["total"] == {
        "requests": 0, "errors": 0, "error_rate": 0.0}
    assert api.get("/report/cost", params=past).json()["rows"] == []
    flow = api.get("/series/traffic", params=past).json()
    assert flow["by_model"] == [] and set(flow["total"]["requests"]) == {0}
    assert set(flow["total"]["error_rate"]) == {None}
    series = api.get("/series/latency", params=past).json()
    assert set(series["count"]) == {0} and set(series["p99"]) == {None}
    assert api.get("/top-users", params=past).json()["users"] == []
    assert api.get("/search", params=past).json() == {"events": []}


@pytest.mark.parametrize(("path", "params", "says"), [
    ("/report/latency", {"since": "yesterday"}, "ISO 8601"),
    ("/report/latency", {"since": "1h", "until": "2h"}, "before"),
    ("/report/cost", {"by": "week"}, "by must be"),
    ("/report/uptime", {}, "not a question"),
    ("/report/errors", {"sinse": "1h"}, "unknown parameter"),
    ("/search", {"status": "6xx"}, "1xx to 5xx"),
    ("/search", {"limit": "0"}, "between 1 and 1000"),
    ("/search", {"limit": "many"}, "whole number"),
    ("/search", {"limit": "5000"}, "between 1 and 1000"),
    ("/series/traffic", {"step": "1s"}, "at least 1m"),
    ("/series/traffic", {"step": "soon"}, "duration"),
    ("/series/latency", {"since": "30d", "step": "1m"}, "more than"),
    ("/top-users", {"limit": "-1"}, "between"),
    ("/quota", {"x": "1"}, "unknown parameter"),
])
def test_bad_input_is_a_clear_400(api: httpx.Client, path: str, params: dict[str, str],
                                  says: str) -> None:
    answer = api.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["message"]


def test_a_parameter_given_twice_is_refused(api: httpx.Client) -> None:
    answer = api.get("/search?model=a&model=b")
    assert answer.status_code == 400 and "twice" in answer.json()["message"]


def test_the_page_and_its_assets_are_served_from_the_package(
        traffic: tuple[ReceiverProcess, int]) -> None:
    url = traffic[0].url
    page = httpx.get(url + "/ui/")
    assert page.status_code == 200 and 'src="/ui/static/app.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = httpx.get(url + "/ui/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript")
    assert "https://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert httpx.get(url + "/ui/static/../../settings.py").status_code == 404
    assert httpx.get(url + "/ui").status_code == 308
    assert httpx.get(url + "/ui/login").status_code == 303  # open on loopback: nothing to log into


@pytest.fixture
def usage() -> Iterator[UsageServer]:
    with UsageServer() as server:
        server.answer(200, {"remaining": 7500, "total": 10000})
        yield server


def test_a_token_guards_page_and_api_and_is_never_shown(tmp_path: Path,
                                                        usage: UsageServer) -> None:
    env = {"INGEST_UI_TOKEN": TOKEN, "INGEST_RELAY_USAGE_URL": usage.url,
           "INGEST_RELAY_API_KEY": RELAY_KEY, "INGEST_RELAY_USAGE_INTERVAL": "200ms",
           "INGEST_LOG_LEVEL": "debug", "NO_PROXY": "127.0.0.1"}
    seen: list[httpx.Response] = []
    with ReceiverProcess(tmp_path / "data", env=env) as receiver, \
            httpx.Client(base_url=receiver.url, timeout=10,
                         event_hooks={"response": [lambda r: r.read() and None]}) as http:
        def get(path: str, **kw: Any) -> httpx.Response:
            answer = http.get(path, **kw)
            seen.append(answer)
            return answer

        send_spread(receiver.webhook_url, 20, int(time.time() * 1000), "tok")
        refused = get("/api/v1/report/latency")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert get("/api/v1/search", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert get("/ui/").status_code == 303 and get("/ui/").headers["location"] == "/ui/login"
        assert get("/ui/login").status_code == 200
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert get("/api/v1/report/errors", params={"since": "4h"}, headers=bearer).json()[
            "total"]["requests"] == 20

        wrong = http.post("/ui/login", data={"token": "not-it"})
        seen.append(wrong)
        assert wrong.status_code == 401 and "session" not in str(http.cookies)
        login = http.post("/ui/login", data={"token": TOKEN})
        seen.append(login)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert get("/ui/").status_code == 200  # the cookie now
        assert get("/api/v1/search").json()["events"]
        wait_until(lambda: get("/api/v1/quota").json().get("remaining") == 7500, 15,
                   "the quota on the API")
        shown = get("/api/v1/quota").json()
        assert shown["limit"] == 10000 and shown["state"] == "ok"
        assert shown["last_polled"] and shown["last_success"]
        logout = http.post("/ui/logout")
        seen.append(logout)
        http.cookies.clear()
        assert get("/api/v1/quota").status_code == 401
        log = receiver.log()
    for answer in seen:
        everything = answer.content + str(answer.headers).encode()
        for secret in (TOKEN, RELAY_KEY, SECRET):
            assert secret.encode() not in everything, answer.url
    for secret in (TOKEN, RELAY_KEY, SECRET):
        assert secret not in log
    assert "GET /api/v1" in log or "dashboard on" in log  # the log was read, not empty


def test_ui_off_removes_page_and_api(tmp_path: Path) -> None:
    with ReceiverProcess(tmp_path / "data", env={"INGEST_UI": "off"}) as receiver:
        assert httpx.get(receiver.url + "/ui/").status_code == 404
        assert httpx.get(receiver.url + "/api/v1/report/latency").status_code == 404
        body, headers = signed({"id": "off-1", "model": "m", "status_code": 200})
        assert httpx.post(receiver.webhook_url, content=body, headers=headers).status_code == 202


def test_serve_beyond_loopback_without_a_token_exits_saying_how(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    env.update(INGEST_WEBHOOK_SECRET=SECRET, INGEST_MIN_FREE_DISK_BYTES="0")
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "serve", "--host", "0.0.0.0", "--port",
         str(free_port()), "--data-dir", str(tmp_path / "d")],
        env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert done.returncode == 2
    assert "INGEST_UI_TOKEN" in done.stderr and "INGEST_UI=off" in done.stderr
    assert "Traceback" not in done.stderr
