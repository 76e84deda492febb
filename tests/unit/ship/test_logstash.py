"""LogstashSink's answers to each status, over httpx's mock transport (no server needed)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest

from ingest import records
from ingest.errors import ConfigError, RemoteError, RemoteRefused, RemoteUnavailable
from ingest.records import Pending
from ingest.ship.logstash import LogstashConnection, LogstashSink
from ingest.testing import run_bounded as run

URL = "http://127.0.0.1:8081/"



def items(*ids: str) -> list[Pending]:
    return [Pending(n, i, orjson.dumps({"id": i}), b'{"raw":1}') for n, i in enumerate(ids, 1)]


def send(handler: Callable[[httpx.Request], httpx.Response], sent: list[Pending],
         url: str = URL) -> records.Outcome:
    async def scenario() -> records.Outcome:
        sink = LogstashSink(LogstashConnection(url), transport=httpx.MockTransport(handler))
        try:
            [(batch, body)] = list(sink.chunks(sent, "ignored", 100, 10**6))
            return await sink.send(batch, body)
        finally:
            await sink.close()

    return run(scenario())


def failure(handler: Callable[[httpx.Request], httpx.Response], url: str = URL) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        send(handler, items("a", "b"), url)
    return caught.value


def test_a_2xx_ships_the_whole_batch_as_ndjson() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, text="ok")

    outcome = send(handler, items("a", "b"))
    assert [p.event_id for p in outcome.shipped] == ["a", "b"]
    [body] = bodies
    assert [orjson.loads(line)["id"] for line in body.splitlines()] == ["a", "b"]
    assert orjson.loads(body.splitlines()[0])["event"] == {"original": '{"raw":1}'}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507])
def test_retryable_statuses_are_unavailable(status: int) -> None:
    error = failure(lambda request: httpx.Response(status))
    assert type(error) is RemoteUnavailable
    assert error.status == status


@pytest.mark.parametrize("status", [401, 403])
def test_not_authorised_is_refused_and_names_the_settings(status: int) -> None:
    error = failure(lambda request: httpx.Response(status))
    assert type(error) is RemoteRefused
    assert "INGEST_LOGSTASH_USERNAME/_PASSWORD" in error.message


def test_timeouts_and_connection_errors_are_unavailable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    assert failure(slow).message == "Logstash: timed out"
    assert failure(refused).message == "Logstash: cannot connect (ConnectError)"


@pytest.mark.parametrize("status", [400, 501])
def test_a_refused_batch_is_halved_until_the_refused_event_stands_alone(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ids = [orjson.loads(line)["id"] for line in request.content.splitlines()]
        return httpx.Response(status, text="bad event") if "c" in ids else httpx.Response(200)

    outcome = send(handler, items("a", "b", "c", "d", "e"))
    assert sorted(p.event_id for p in outcome.shipped) == ["a", "b", "d", "e"]
    assert [(d.item.event_id, d.status, d.reason) for d in outcome.dead] == [
        ("c", status, "bad event")]


def test_credentials_in_the_url_are_never_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        LogstashSink(LogstashConnection("ftp://ingest:ls-secret@127.0.0.1"))
    assert "ls-secret" not in caught.value.message
    sink = LogstashSink(LogstashConnection("http://ingest:ls-secret@127.0.0.1:8081"))
    assert sink.url == "http://***@127.0.0.1:8081"
    run(sink.close())
