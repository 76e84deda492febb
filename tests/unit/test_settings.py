"""Settings from INGEST_* environment variables, with CLI-style overrides on top."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from ingest.errors import ConfigError
from ingest.settings import Settings, documented, load, parse_duration, serve_epilog


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No INGEST_* variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("INGEST_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults():
    s = load()
    assert s.webhook_secret == []
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.data_dir == Path("data")
    assert s.signature_tolerance_s == 300
    assert int(s.max_body_bytes) == 1 << 20
    assert s.dedup_window == timedelta(hours=72)
    assert s.retention == timedelta(days=30)
    assert s.price_file is None


def test_env_prefix(clean_env):
    clean_env.setenv("INGEST_PORT", "9123")
    clean_env.setenv("INGEST_HOST", "0.0.0.0")
    clean_env.setenv("INGEST_DATA_DIR", "/var/lib/ingest")
    clean_env.setenv("INGEST_STORE_SYNC", "normal")
    clean_env.setenv("PORT", "1")  # no prefix: ignored
    s = load()
    assert (s.port, s.host, s.data_dir, s.store_sync) == (
        9123, "0.0.0.0", Path("/var/lib/ingest"), "normal")


@pytest.mark.parametrize(("value", "expected"), [
    ("one", ["one"]),
    ("old,new", ["old", "new"]),
    (" old , new ,, ", ["old", "new"]),
    ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,plain", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                                                      "plain"]),
])
def test_comma_separated_secrets(clean_env, value, expected):
    clean_env.setenv("INGEST_WEBHOOK_SECRET", value)
    s = load()
    assert s.secrets() == expected
    assert "old" not in repr(s)  # SecretStr hides the values


@pytest.mark.parametrize("value", [None, "", " , ,"])
def test_no_secret_is_a_config_error_naming_the_variable(clean_env, value):
    if value is not None:
        clean_env.setenv("INGEST_WEBHOOK_SECRET", value)
    s = load()
    with pytest.raises(ConfigError) as info:
        s.secrets()
    assert "INGEST_WEBHOOK_SECRET" in info.value.message


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", timedelta(days=30)),
    ("72h", timedelta(hours=72)),
    ("15m", timedelta(minutes=15)),
    ("10s", timedelta(seconds=10)),
    ("500ms", timedelta(milliseconds=500)),
    ("2w", timedelta(weeks=2)),
    ("1.5h", timedelta(minutes=90)),
    ("45", timedelta(seconds=45)),
    (" 7 D ", timedelta(days=7)),
    ("250MS", timedelta(milliseconds=250)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


def test_parse_duration_numbers_are_seconds():
    assert parse_duration(90) == timedelta(seconds=90)
    assert parse_duration(0.25) == timedelta(milliseconds=250)


@pytest.mark.parametrize("text", ["", "ten", "5 days", "-5s", "5y", "1h30m", "1e3s"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError, match="500ms"):
        parse_duration(text)


def test_durations_from_env(clean_env):
    clean_env.setenv("INGEST_RETENTION", "45d")
    clean_env.setenv("INGEST_DEDUP_WINDOW", "48h")
    clean_env.setenv("INGEST_HOUSEKEEPING", "500ms")
    s = load()
    assert s.retention == timedelta(days=45)
    assert s.dedup_window == timedelta(hours=48)
    assert s.housekeeping == timedelta(milliseconds=500)


def test_bad_duration_is_a_config_error_naming_the_variable(clean_env):
    clean_env.setenv("INGEST_RETENTION", "forever")
    with pytest.raises(ConfigError) as info:
        load()
    assert "INGEST_RETENTION" in info.value.message


@pytest.mark.parametrize(("text", "expected"), [
    ("1MiB", 1 << 20), ("2 MiB", 2 << 20), ("1MB", 1_000_000), ("512KiB", 512 << 10),
    ("1GiB", 1 << 30), ("4096", 4096),
])
def test_sizes(clean_env, text, expected):
    clean_env.setenv("INGEST_MAX_BODY_BYTES", text)
    clean_env.setenv("INGEST_MAX_STORE_BYTES", text)
    s = load()
    assert int(s.max_body_bytes) == expected
    assert int(s.max_store_bytes) == expected


@pytest.mark.parametrize("text", ["0", "lots", "-1MiB"])
def test_bad_sizes(clean_env, text):
    clean_env.setenv("INGEST_MAX_BODY_BYTES", text)
    with pytest.raises(ConfigError, match="INGEST_MAX_BODY_BYTES"):
        load()


def test_retention_shorter_than_dedup_window_is_refused(clean_env):
    clean_env.setenv("INGEST_RETENTION", "1d")
    clean_env.setenv("INGEST_DEDUP_WINDOW", "72h")
    with pytest.raises(ConfigError) as info:
        load()
    assert "INGEST_RETENTION" in info.value.message
    assert "INGEST_DEDUP_WINDOW" in info.value.message


def test_retention_equal_to_dedup_window_is_fine(clean_env):
    clean_env.setenv("INGEST_RETENTION", "3d")
    clean_env.setenv("INGEST_DEDUP_WINDOW", "72h")
    assert load().retention == timedelta(hours=72)


def test_retention_check_applies_to_overrides_too():
    with pytest.raises(ConfigError):
        load(retention="1h")


def test_overrides_beat_env(clean_env):
    clean_env.setenv("INGEST_PORT", "9000")
    clean_env.setenv("INGEST_DATA_DIR", "/env")
    s = load(port=9001, data_dir=Path("/flag"))
    assert (s.port, s.data_dir) == (9001, Path("/flag"))


def test_overrides_of_none_are_ignored(clean_env):
    clean_env.setenv("INGEST_PORT", "9000")
    clean_env.setenv("INGEST_PRICE_FILE", "/etc/prices.toml")
    s = load(port=None, host=None, price_file=None, data_dir=None)
    assert s.port == 9000
    assert s.host == "127.0.0.1"
    assert s.price_file == Path("/etc/prices.toml")
    assert s.data_dir == Path("data")


@pytest.mark.parametrize(("name", "value"), [
    ("INGEST_PORT", "70000"), ("INGEST_PORT", "http"), ("INGEST_STORE_SYNC", "sometimes"),
    ("INGEST_LOG_LEVEL", "loud"), ("INGEST_SIGNATURE_TOLERANCE_S", "0"),
    ("INGEST_RETRY_AFTER_S", "0"), ("INGEST_COST_TOLERANCE", "-0.1"),
])
def test_invalid_values_are_config_errors_naming_the_variable(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load()
    assert name in info.value.message
    assert info.value.message.startswith("invalid settings:")


def test_unknown_ingest_variables_are_ignored(clean_env):
    clean_env.setenv("INGEST_SOMETHING_ELSE", "x")
    assert isinstance(load(), Settings)


RELAY_KEY = "sk-relay-9f8e7d6c5b4a"


def test_relay_usage_is_off_by_default():
    s = load()
    assert s.relay_usage_url is None and s.relay_api_key is None
    assert s.relay_usage_interval == timedelta(seconds=60)
    assert s.relay_usage_timeout == timedelta(seconds=10)
    assert (s.relay_usage_remaining_field, s.relay_usage_total_field) == ("remaining", "total")


def test_relay_usage_from_env(clean_env):
    clean_env.setenv("INGEST_RELAY_USAGE_URL", " https://relay.example/v1/usage ")
    clean_env.setenv("INGEST_RELAY_API_KEY", RELAY_KEY)
    clean_env.setenv("INGEST_RELAY_USAGE_INTERVAL", "5m")
    clean_env.setenv("INGEST_RELAY_USAGE_TIMEOUT", "3s")
    clean_env.setenv("INGEST_RELAY_USAGE_REMAINING_FIELD", "data.quota.remaining")
    clean_env.setenv("INGEST_RELAY_USAGE_TOTAL_FIELD", "data.quota.total")
    s = load()
    assert s.relay_usage_url == "https://relay.example/v1/usage"
    assert s.relay_api_key is not None and s.relay_api_key.get_secret_value() == RELAY_KEY
    assert RELAY_KEY not in repr(s)
    assert s.relay_usage_interval == timedelta(minutes=5)
    assert s.relay_usage_timeout == timedelta(seconds=3)
    assert s.relay_usage_remaining_field == "data.quota.remaining"
    assert s.relay_usage_total_field == "data.quota.total"


def test_empty_relay_variables_mean_unset(clean_env):
    clean_env.setenv("INGEST_RELAY_USAGE_URL", "")
    clean_env.setenv("INGEST_RELAY_API_KEY", "  ")
    s = load()
    assert s.relay_usage_url is None and s.relay_api_key is None


@pytest.mark.parametrize(("env", "names"), [
    ({"INGEST_RELAY_API_KEY": RELAY_KEY}, ["INGEST_RELAY_API_KEY", "INGEST_RELAY_USAGE_URL"]),
    ({"INGEST_RELAY_USAGE_URL": "https://relay.example/usage"},
     ["INGEST_RELAY_USAGE_URL", "INGEST_RELAY_API_KEY"]),
    ({"INGEST_RELAY_USAGE_URL": "ftp://relay.example/usage", "INGEST_RELAY_API_KEY": RELAY_KEY},
     ["INGEST_RELAY_USAGE_URL", "http"]),
    ({"INGEST_RELAY_USAGE_URL": "relay.example/usage", "INGEST_RELAY_API_KEY": RELAY_KEY},
     ["INGEST_RELAY_USAGE_URL", "http"]),
    ({"INGEST_RELAY_USAGE_URL": "https:///usage", "INGEST_RELAY_API_KEY": RELAY_KEY},
     ["INGEST_RELAY_USAGE_URL", "host"]),
    ({"INGEST_RELAY_USAGE_URL": "https://relay.example/u",
      "INGEST_RELAY_API_KEY": "a b" + RELAY_KEY}, ["INGEST_RELAY_API_KEY", "without spaces"]),
    ({"INGEST_RELAY_USAGE_URL": "https://relay.example/u",
      "INGEST_RELAY_API_KEY": RELAY_KEY + "\r\nX-Injected: 1"}, ["INGEST_RELAY_API_KEY"]),
    ({"INGEST_RELAY_USAGE_REMAINING_FIELD": "data..remaining"},
     ["INGEST_RELAY_USAGE_REMAINING_FIELD", "data.remaining"]),
    ({"INGEST_RELAY_USAGE_TOTAL_FIELD": "total."}, ["INGEST_RELAY_USAGE_TOTAL_FIELD"]),
    ({"INGEST_RELAY_USAGE_TOTAL_FIELD": "my total"}, ["INGEST_RELAY_USAGE_TOTAL_FIELD"]),
    ({"INGEST_RELAY_USAGE_INTERVAL": "0s"}, ["INGEST_RELAY_USAGE_INTERVAL"]),
    ({"INGEST_RELAY_USAGE_TIMEOUT": "soon"}, ["INGEST_RELAY_USAGE_TIMEOUT"]),
])
def test_relay_usage_misconfigurations_are_clear_and_never_show_the_key(clean_env, env, names):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load()
    for name in names:
        assert name in info.value.message
    assert RELAY_KEY not in info.value.message
    assert RELAY_KEY not in str(info.value)


# -- documented once: the field descriptions feed --help, and the README is held to them ------
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_settings() -> dict[str, str]:
    """Each variable in the first cell of a README table row -> its default cell part."""
    found: dict[str, str] = {}
    for line in README.read_text().splitlines():
        if not line.startswith("| `INGEST_"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`(INGEST_[A-Z0-9_]+)`", cells[0])
        defaults = [part.strip() for part in cells[1].split(" / ")]
        assert len(defaults) in (1, len(names)), f"one default per variable: {line}"
        for name, default in zip(names, defaults * len(names) if len(defaults) == 1
                                 else defaults, strict=True):
            assert name not in found, f"{name} is in two README rows"
            found[name] = default
    return found


def test_every_setting_has_a_description() -> None:
    assert [name for name, _, text in documented() if not text] == []


def test_the_readme_lists_every_setting_with_its_default() -> None:
    listed = _readme_settings()
    assert sorted(set(name for name, _, _ in documented()) - set(listed)) == []
    assert sorted(set(listed) - set(name for name, _, _ in documented())) == []
    wrong = []
    for name, default, _ in documented():
        cell = listed[name]
        if default is None:
            ok = cell in ("none", "(required)")
        else:
            ok = cell.startswith(f"`{default}`") or cell.startswith(f"`./{default}`")
        if not ok:
            wrong.append(f"{name}: README says {cell!r}, Settings say {default!r}")
    assert wrong == []


def test_serve_help_lists_every_setting_from_its_description() -> None:
    epilog = serve_epilog()
    flat = " ".join(epilog.split())
    for name, default, text in documented():
        assert f"  {name}\n" in epilog
        assert text in flat
        if default is not None:
            assert f"{text} (default {default})" in flat
    assert "INGEST_HOUSEKEEPING" in epilog  # the hand-written list had lost it
