"""Who may open the dashboard: loopback or not, the token rule, the gate, the settings."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ingest.cli.parser import main
from ingest.errors import ConfigError
from ingest.settings import Settings, load
from ingest.ui import access
from ingest.ui.access import Gate

TOKEN = "ui-token-0123456789abcdef"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert access.on_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.5", "fe80::1",
                                  "2001:db8::1", "no-such-host.invalid"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not access.on_loopback(host)


def test_a_name_is_loopback_only_if_every_address_it_resolves_to_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, list[str]] = {"both.test": ["127.0.0.1", "192.0.2.7"],
                                     "inside.test": ["127.0.0.1", "::1"]}

    def fake(name: str, port: Any, *args: Any, **kw: Any) -> list[Any]:
        if name not in answers:
            raise socket.gaierror(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))
                for address in answers[name]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert access.on_loopback("inside.test")
    assert not access.on_loopback("both.test")
    assert not access.on_loopback("elsewhere.test")


def settings(**kw: Any) -> Settings:
    return Settings(webhook_secret=["s"], **kw)


def test_beyond_loopback_without_a_token_is_refused_with_how_to_set_one() -> None:
    with pytest.raises(ConfigError) as refused:
        access.check(settings(host="0.0.0.0"))
    assert "INGEST_UI_TOKEN" in refused.value.message
    assert "secrets.token_urlsafe" in refused.value.message
    assert "INGEST_UI=off" in refused.value.message
    access.check(settings(host="0.0.0.0", ui_token=TOKEN))
    access.check(settings(host="0.0.0.0", ui=False))
    access.check(settings(host="127.0.0.1"))


def test_the_gate_open_and_closed() -> None:
    assert Gate(None).allows(None, None)
    gate = Gate(TOKEN)
    assert not gate.open
    assert not gate.allows(None, None)
    assert gate.allows(f"Bearer {TOKEN}", None)
    assert gate.allows(f"bearer   {TOKEN}", None)
    assert not gate.allows(f"Bearer {TOKEN}x", None)
    assert not gate.allows(f"Basic {TOKEN}", None)
    assert not gate.allows("Bearer", None)
    assert gate.session is not None and TOKEN not in gate.session
    assert gate.allows(None, gate.session)
    assert not gate.allows(None, TOKEN)  # the cookie holds the session value, not the token
    assert not gate.allows(None, Gate(TOKEN + "2").session)
    assert gate.token_matches(TOKEN) and not gate.token_matches(TOKEN[:-1])


def test_ui_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_WEBHOOK_SECRET", "s")
    assert load().ui is True and load().ui_token is None
    monkeypatch.setenv("INGEST_UI", "off")
    assert load().ui is False
    monkeypatch.setenv("INGEST_UI_TOKEN", "")
    assert load().ui_token is None  # empty means not set
    monkeypatch.setenv("INGEST_UI_TOKEN", "short")
    with pytest.raises(ConfigError) as short:
        load()
    assert "INGEST_UI_TOKEN" in short.value.message and "short" not in short.value.message
    monkeypatch.setenv("INGEST_UI_TOKEN", "has a space in it, long enough")
    with pytest.raises(ConfigError):
        load()
    monkeypatch.setenv("INGEST_UI_TOKEN", TOKEN)
    assert load().ui_token is not None and TOKEN not in repr(load())


def test_serve_refuses_to_start_open_beyond_loopback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Any) -> None:
    monkeypatch.setenv("INGEST_WEBHOOK_SECRET", "s")
    monkeypatch.delenv("INGEST_UI_TOKEN", raising=False)
    monkeypatch.delenv("INGEST_UI", raising=False)
    started: list[Any] = []
    monkeypatch.setattr("ingest.receive.server.serve", lambda *a: started.append(a))
    code = main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")])
    assert code == 2 and not started
    err = capsys.readouterr().err
    assert "INGEST_HOST=0.0.0.0" in err and "INGEST_UI_TOKEN" in err
