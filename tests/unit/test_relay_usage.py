"""The relay's usage endpoint: parsing its answer, and the poller against httpx.MockTransport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from ingest.app import create_app
from ingest.metrics import Metrics, RelayQuota
from ingest.relay_usage import (
    MAX_ANSWER_BYTES,
    REASONS,
    Failure,
    Usage,
    UsagePoller,
    field_path,
    parse_usage,
    redact,
)
from ingest.settings import Settings
from ingest.testing import SECRET

KEY = "sk-relay-0123456789-never-shown"
URL = "https://relay.example/v1/usage?team=a"
R, T = field_path("remaining"), field_path("total")


def parse(document: Any, remaining: str = "remaining", total: str = "total") -> Usage | Failure:
    body = document if isinstance(document, bytes) else orjson.dumps(document)
    return parse_usage(body, field_path(remaining), field_path(total))


# --- parse_usage --------------------------------------------------------------------------------


@pytest.mark.parametrize(("document", "remaining", "total", "expected"), [
    ({"remaining": 2500, "total": 10000}, "remaining", "total", Usage(2500, 10000)),
    ({"remaining": 0.5, "total": 1, "other": [1]}, "remaining", "total", Usage(0.5, 1)),
    ({"remaining": 0, "total": 0}, "remaining", "total", Usage(0, 0)),
    ({"remaining": 7, "total": 7}, "remaining", "total", Usage(7, 7)),
    # Amounts as decimal strings, as billing APIs often send them.
    ({"remaining": "12.50", "total": " 100 "}, "remaining", "total", Usage(12.5, 100)),
    ({"remaining": "1e3", "total": "2E3"}, "remaining", "total", Usage(1000, 2000)),
    ({"data": {"quota": {"left": 3, "limit": 9}}}, "data.quota.left", "data.quota.limit",
     Usage(3, 9)),
    ({"accounts": [{"left": 1, "limit": 4}]}, "accounts.0.left", "accounts.0.limit",
     Usage(1, 4)),
    ({"remaining_quota": 5, "total_quota": 6}, "remaining_quota", "total_quota", Usage(5, 6)),
])
def test_good_answers(document: Any, remaining: str, total: str, expected: Usage) -> None:
    assert parse(document, remaining, total) == expected


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "malformed_json"),
    (b"<html>bad gateway</html>", "malformed_json"),
    (b'{"remaining": 1, "total": ', "malformed_json"),
    (b'{"remaining": 1e400, "total": 2}', "malformed_json"),  # overflows a double
    (b'{"remaining": NaN, "total": 2}', "malformed_json"),
    (b"[1, 2]", "malformed_json"),
    (b'"remaining"', "malformed_json"),
    (b"{}", "missing_field"),
    (b'{"remaining": 1}', "missing_field"),
    (b'{"total": 1}', "missing_field"),
    (b'{"Remaining": 1, "total": 2}', "missing_field"),
    (b'{"remaining": null, "total": 2}', "not_a_number"),
    (b'{"remaining": true, "total": 2}', "not_a_number"),
    (b'{"remaining": 1, "total": false}', "not_a_number"),
    (b'{"remaining": "lots", "total": 2}', "not_a_number"),
    (b'{"remaining": "NaN", "total": 2}', "not_a_number"),
    (b'{"remaining": "inf", "total": 2}', "not_a_number"),
    (b'{"remaining": "1e999", "total": 2}', "not_a_number"),
    (b'{"remaining": "", "total": 2}', "not_a_number"),
    (b'{"remaining": [1], "total": 2}', "not_a_number"),
    (b'{"remaining": {"v": 1}, "total": 2}', "not_a_number"),
    (b'{"remaining": -1, "total": 2}', "negative"),
    (b'{"remaining": 1, "total": "-2"}', "negative"),
    (b'{"remaining": 3, "total": 2}', "remaining_over_total"),
    (b'{"remaining": 0.1, "total": 0}', "remaining_over_total"),
])
def test_bad_answers_name_their_reason(body: bytes, reason: str) -> None:
    outcome = parse_usage(body, R, T)
    assert isinstance(outcome, Failure), outcome
    assert outcome.reason == reason, outcome
    assert outcome.reason in REASONS


def test_paths_do_not_reach_through_the_wrong_kinds() -> None:
    assert parse({"data": [5, 6]}, "data.remaining", "data.1") == Failure(
        "missing_field", "no field 'data.remaining' in the answer")
    assert parse({"data": {"0": 2, "1": 3}}, "data.0", "data.1") == Usage(2, 3)  # keys first
    assert isinstance(parse({"a": [1]}, "a.5", "a.0"), Failure)
    assert isinstance(parse({"a": "xyz"}, "a.0", "a.1"), Failure)  # no indexing into strings


def test_details_name_fields_and_kinds_never_values() -> None:
    outcome = parse({"remaining": "private-looking-text", "total": 2})
    assert outcome == Failure("not_a_number", "field 'remaining' is a string, not a number")
    assert "private-looking-text" not in str(outcome)


def test_redact_keeps_scheme_host_port_path_only() -> None:
    assert redact("https://u:p@relay.example:8443/v1/usage?key=abc#x") == \
        "https://relay.example:8443/v1/usage"
    assert redact(URL) == "https://relay.example/v1/usage"


# --- the poller ---------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Stop(Exception):
    """Raised by the scripted sleep to end `run()` after the planned polls."""


def poller(handler: Callable[[httpx.Request], Any], *, clock: Clock | None = None,
           quota: RelayQuota | None = None, sleep: Any = None, timeout_s: float = 5.0,
           remaining: str = "remaining", total: str = "total") -> UsagePoller:
    quota = quota if quota is not None else Metrics(CollectorRegistry()).watch_relay_quota(
        REASONS)
    kwargs = {"sleep": sleep} if sleep is not None else {}
    return UsagePoller(URL, KEY, remaining_field=remaining, total_field=total, interval_s=60,
                       timeout_s=timeout_s, sink=quota, transport=httpx.MockTransport(handler),
                       clock=clock or Clock(), **kwargs)


def answer(remaining: Any = 2500, total: Any = 10000, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"remaining": remaining, "total": total})


def values(metrics: Metrics) -> dict[str, float | None]:
    r = metrics.registry
    found: dict[str, float | None] = {
        name: r.get_sample_value(name) for name in (
            "holysheep_relay_quota_remaining", "holysheep_relay_quota_limit",
            "holysheep_relay_usage_last_success_timestamp_seconds")}
    for reason in REASONS:
        found[reason] = r.get_sample_value("holysheep_relay_usage_poll_failures_total",
                                           {"reason": reason})
    return found


def test_a_good_poll_sends_the_key_as_bearer_and_sets_the_gauges() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(250, 10000)

    metrics = Metrics(CollectorRegistry())
    quota = metrics.watch_relay_quota(REASONS)
    before = values(metrics)
    assert before["holysheep_relay_quota_remaining"] is None  # not 0: nothing known yet
    assert before["holysheep_relay_usage_last_success_timestamp_seconds"] is None
    assert all(before[reason] == 0 for reason in REASONS)  # present at 0 from the start

    clock = Clock(1_800_000_123.5)
    outcome = asyncio.run(poller(handler, clock=clock, quota=quota).poll())
    assert outcome == Usage(250, 10000)
    assert [str(r.url) for r in seen] == [URL]
    assert seen[0].method == "GET"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert seen[0].headers["accept"] == "application/json"
    got = values(metrics)
    assert got["holysheep_relay_quota_remaining"] == 250
    assert got["holysheep_relay_quota_limit"] == 10000
    assert got["holysheep_relay_usage_last_success_timestamp_seconds"] == 1_800_000_123.5
    assert all(got[reason] == 0 for reason in REASONS)


async def _never(request: httpx.Request) -> httpx.Response:
    await asyncio.Event().wait()  # an endpoint that never answers
    raise AssertionError("unreachable")


class _Dribble(httpx.AsyncByteStream):
    """An answer whose every byte comes quickly, but the whole of it too late."""

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for _ in range(1000):
            await asyncio.sleep(0.01)
            yield b" "


def _dribbling(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=_Dribble())


def _raise(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc
    return handler


def _respond(status: int = 200, **kwargs: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, **kwargs)  # a new one for each request


FAILURES = [
    ("unauthorized", _respond(401, json={"error": "invalid api key"})),
    ("unauthorized", _respond(403)),
    ("http_status", _respond(500, json={"remaining": 1, "total": 2})),
    ("http_status", _respond(429)),
    ("http_status", _respond(302, headers={"Location": "https://elsewhere/"})),
    ("timeout", _raise(httpx.ReadTimeout("read timed out"))),
    ("timeout", _raise(httpx.ConnectTimeout("connect timed out"))),
    ("timeout", _never),
    ("timeout", _dribbling),
    ("connection", _raise(httpx.ConnectError("[Errno 111] Connection refused"))),
    ("connection", _raise(httpx.RemoteProtocolError("peer closed connection"))),
    ("malformed_json", _respond(content=b"<html>maintenance</html>")),
    ("malformed_json", _respond(stream=httpx.ByteStream(b"not gzip"),
                                headers={"Content-Encoding": "gzip"})),
    ("too_large", _respond(content=b" " * (MAX_ANSWER_BYTES + 1))),
    ("missing_field", _respond(json={"balance": 3})),
    ("not_a_number", _respond(json={"remaining": "plenty", "total": 2})),
    ("negative", _respond(json={"remaining": -5, "total": 2})),
    ("remaining_over_total", _respond(json={"remaining": 11, "total": 10})),
    ("error", _raise(RuntimeError("a bug in a transport"))),
]


@pytest.mark.parametrize(("reason", "failing"), FAILURES,
                         ids=[f"{reason}-{n}" for n, (reason, _) in enumerate(FAILURES)])
def test_a_failed_poll_is_counted_by_reason_and_keeps_the_last_good_values(
        reason: str, failing: Callable[[httpx.Request], Any]) -> None:
    script: list[Callable[[httpx.Request], Any]] = [
        _respond(json={"remaining": 900, "total": 1000}), failing]
    requests: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        result = script.pop(0)(request)
        return await result if asyncio.iscoroutine(result) else result  # type: ignore[no-any-return]

    metrics = Metrics(CollectorRegistry())
    clock = Clock(1_800_000_000)
    polls = poller(handler, clock=clock, quota=metrics.watch_relay_quota(REASONS),
                   timeout_s=0.05)

    async def both() -> tuple[Usage | Failure, Usage | Failure]:
        first = await polls.poll()
        clock.now += 60
        second = await polls.poll()  # raises nothing, whatever the endpoint did
        await polls.stop()
        return first, second

    first, second = asyncio.run(asyncio.wait_for(both(), 10))  # a hang fails, not stalls
    assert first == Usage(900, 1000)
    assert isinstance(second, Failure) and second.reason == reason, second
    assert len(requests) == 2  # a redirect is not followed
    got = values(metrics)
    assert got["holysheep_relay_quota_remaining"] == 900
    assert got["holysheep_relay_quota_limit"] == 1000
    assert got["holysheep_relay_usage_last_success_timestamp_seconds"] == 1_800_000_000
    assert {r: got[r] for r in REASONS} == {r: (1 if r == reason else 0) for r in REASONS}
    assert KEY not in second.detail


def test_state_changes_are_logged_once_each_and_never_the_key(
        caplog: pytest.LogCaptureFixture) -> None:
    script = [answer(), httpx.Response(401), httpx.Response(401), httpx.Response(401),
              httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"), answer("2000.25", 123456789),
              answer(1900),
              httpx.Response(200, content=b"oops")]

    def handler(request: httpx.Request) -> httpx.Response:
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    polls = poller(handler)

    async def all_of_them() -> None:
        for _ in range(9):
            await polls.poll()
        await polls.stop()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(all_of_them())
    ours = [r for r in caplog.records if r.name == "ingest.relay_usage"]
    assert [(r.levelname, r.getMessage()) for r in ours] == [
        ("INFO", "relay quota from https://relay.example/v1/usage: 2500 of 10000 remaining"),
        ("WARNING", "relay usage poll of https://relay.example/v1/usage failed (unauthorized): "
                    "HTTP 401: check INGEST_RELAY_API_KEY; keeping the last good values"),
        ("WARNING", "relay usage poll of https://relay.example/v1/usage failed (timeout): "
                    "no answer within 5 s; keeping the last good values"),
        ("WARNING", "relay usage poll of https://relay.example/v1/usage works again: 2000.25 of "
                    "123456789 remaining"),
        ("WARNING", "relay usage poll of https://relay.example/v1/usage failed "
                    "(malformed_json): the answer is not JSON; keeping the last good values"),
    ]
    assert KEY not in caplog.text
    assert "team=a" not in caplog.text  # the query string is not shown either


def test_a_failure_before_any_good_answer_says_no_quota_is_known(
        caplog: pytest.LogCaptureFixture) -> None:
    polls = poller(_respond(503))
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(polls.poll()) == Failure("http_status", "HTTP 503")
    assert caplog.messages == ["relay usage poll of https://relay.example/v1/usage failed "
                               "(http_status): HTTP 503; no quota known yet"]


def test_run_polls_once_per_interval_on_the_injected_clock() -> None:
    clock = Clock(1000.0)
    durations = [2.0, 75.0, 0.0, -3600.0]  # fake time each poll takes (the last: clock set back)
    polled_at: list[float] = []
    slept: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        polled_at.append(clock.now)
        clock.now += durations[len(polled_at) - 1]
        return answer()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == len(durations):
            raise Stop
        clock.now += seconds

    polls = poller(handler, clock=clock, sleep=sleep)

    async def go() -> None:
        with pytest.raises(Stop):
            await polls.run()
        await polls.stop()

    asyncio.run(go())
    # 2 s poll: the rest of the minute; 75 s poll: the next one at once; set back: one interval.
    assert slept == [58.0, 0.0, 60.0, 60.0]
    assert polled_at == [1000.0, 1060.0, 1135.0, 1195.0]


def test_run_survives_every_kind_of_failure_and_stop_cancels_cleanly() -> None:
    steps: list[Any] = [httpx.ConnectError("refused"), RuntimeError("bug"), httpx.Response(401),
                        httpx.Response(200, content=b"{"), answer(5, 10)]

    def handler(request: httpx.Request) -> httpx.Response:
        step = steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step  # type: ignore[no-any-return]

    metrics = Metrics(CollectorRegistry())
    quota = metrics.watch_relay_quota(REASONS)
    good = asyncio.Event()
    succeeded = quota.succeeded

    def observed(remaining: float, total: float, at: float) -> None:
        succeeded(remaining, total, at)
        good.set()

    quota.succeeded = observed  # type: ignore[method-assign]
    parked = asyncio.Event()  # never set: after the good answer the poller waits here

    async def sleep(seconds: float) -> None:
        if good.is_set():
            await parked.wait()
        await asyncio.sleep(0)  # only yields: the failed polls follow each other at once

    polls = poller(handler, quota=quota, sleep=sleep)

    async def go() -> None:
        polls.start()
        await asyncio.wait_for(good.wait(), 5)
        task = polls._task
        assert task is not None and not task.done()
        await polls.stop()
        assert task.cancelled()
        assert polls.client.is_closed

    asyncio.run(go())
    got = values(metrics)
    assert (got["connection"], got["error"], got["unauthorized"], got["malformed_json"]) == (
        1, 1, 1, 1)
    assert got["holysheep_relay_quota_remaining"] == 5


def test_the_poll_timeout_never_exceeds_the_interval() -> None:
    polls = UsagePoller(URL, KEY, remaining_field="r", total_field="t", interval_s=2,
                        timeout_s=10, sink=RelayQuota(REASONS))
    assert polls.timeout_s == 2
    asyncio.run(polls.stop())


# --- in the app ---------------------------------------------------------------------------------


def _app_metrics(tmp_path: Path, handler: Callable[[httpx.Request], Any] | None,
                 until: Callable[[str], bool]) -> str:
    """The app's /metrics once `until` holds (polled with a deadline), through its lifespan."""
    env: dict[str, Any] = {}
    if handler is not None:
        env = {"relay_usage_url": "http://relay.test/usage", "relay_api_key": KEY,
               "relay_usage_remaining_field": "data.remaining",
               "relay_usage_total_field": "data.total"}
    settings = Settings(webhook_secret=SECRET, data_dir=tmp_path / "data",
                        min_free_disk_bytes=0, **env)
    transport = httpx.MockTransport(handler) if handler is not None else None
    app = create_app(settings, relay_transport=transport)

    async def go() -> str:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://receiver.test") as c:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                text = (await c.get("/metrics")).text
                if until(text) or asyncio.get_running_loop().time() > deadline:
                    return text
                await asyncio.sleep(0.01)  # the poller's task runs meanwhile; bounded above

    return asyncio.run(go())


def test_the_app_polls_when_configured(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(200, json={"data": {"remaining": 42, "total": 1000}})

    text = _app_metrics(tmp_path, handler, lambda t: "holysheep_relay_quota_remaining 42" in t)
    assert "holysheep_relay_quota_remaining 42.0" in text
    assert "holysheep_relay_quota_limit 1000.0" in text
    assert 'holysheep_relay_usage_poll_failures_total{reason="timeout"} 0.0' in text
    assert KEY not in text


def test_the_app_exposes_no_quota_without_a_usage_url(tmp_path: Path) -> None:
    text = _app_metrics(tmp_path, None, lambda t: "ingest_webhooks" in t)
    assert "ingest_webhooks" in text
    assert "holysheep_relay_quota" not in text
    assert "holysheep_relay_usage" not in text
