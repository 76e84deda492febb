"""The one retry policy and the one URL redaction that every remote uses."""

from __future__ import annotations

import httpx
import pytest

from ingest import remote
from ingest.errors import RemoteRefused, RemoteUnavailable

RETRIED = [408, 429, 500, 502, 503, 504, 507, 509, 599]
REFUSED = [400, 401, 403, 404, 405, 409, 413, 422, 501]


@pytest.mark.parametrize("status", RETRIED)
def test_throttling_server_errors_and_timeouts_are_retried(status: int) -> None:
    assert remote.retryable(status)
    error = remote.answer_error("doing", status, "busy")
    assert type(error) is RemoteUnavailable
    assert error.status == status
    assert error.message == f"doing: HTTP {status} busy"


@pytest.mark.parametrize("status", REFUSED)
def test_client_errors_and_not_implemented_are_refusals(status: int) -> None:
    assert not remote.retryable(status)
    error = remote.answer_error("doing", status, "no", error_type="some_exception")
    assert type(error) is RemoteRefused
    assert error.status == status
    assert error.error_type == "some_exception"


def test_every_status_has_exactly_one_answer() -> None:
    retried = {s for s in range(100, 600) if remote.retryable(s)}
    assert retried == {408, 429} | (set(range(500, 600)) - {501})


@pytest.mark.parametrize("status", [401, 403])
def test_not_authorised_names_the_settings_to_check(status: int) -> None:
    error = remote.answer_error("bulk", status, "security_exception: no", credentials="INGEST_X")
    assert type(error) is RemoteRefused
    assert error.message == (f"bulk: HTTP {status}, not authorised: check INGEST_X "
                             "(security_exception: no)")


def test_no_answer_at_all_is_retried() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:1/")
    timeout = remote.transport_error("post", httpx.ReadTimeout("slow", request=request), 2.5)
    refused = remote.transport_error("post", httpx.ConnectError("refused", request=request))
    broken = remote.transport_error("post", httpx.RemoteProtocolError("eof", request=request))
    assert [type(e) for e in (timeout, refused, broken)] == [RemoteUnavailable] * 3
    assert timeout.message == "post: timed out after 2.5s"
    assert refused.message == "post: cannot connect (ConnectError)"
    assert broken.message == "post: cannot connect (RemoteProtocolError)"
    assert remote.timed_out("bulk").message == "bulk: timed out"


@pytest.mark.parametrize(("url", "shown"), [
    ("http://elastic:pw@127.0.0.1:9200", "http://***@127.0.0.1:9200"),
    ("https://user@es.example/", "https://***@es.example/"),
    ("http://user:p@ss@host:9200/x", "http://***@host:9200/x"),  # an unescaped @ in the password
    ("elastic:pw@127.0.0.1", "***@127.0.0.1"),  # no scheme
    ("http://elastic:pw@127.0.0.1:notaport", "http://***@127.0.0.1:notaport"),
    ("http://127.0.0.1:9200", "http://127.0.0.1:9200"),
    ("http://host/path@not-userinfo", "http://host/path@not-userinfo"),
    ("http://host?q=a@b", "http://host?q=a@b"),
])
def test_redact_hides_user_information_only(url: str, shown: str) -> None:
    assert remote.redact(url) == shown
