"""Rates, tiers, the price book's precedence and cache, override files, the bundled library."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.errors import ConfigError
from ingest.receive.prices import PriceBook, Rate, library_lookup, load_overrides

PROPS = settings(max_examples=200, deadline=None)
DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# Rate.cost -----------------------------------------------------------------------------------


def test_flat_rate_cost():
    rate = Rate(2.5, 10.0, "t")
    assert rate.cost(1_000_000, 0) == 2.5
    assert rate.cost(0, 1_000_000) == 10.0
    assert rate.cost(1000, 500) == pytest.approx(0.0075)
    assert rate.cost(0, 0) == 0


TIERED = Rate(1.0, 4.0, "t", prompt_tiers=((200_000, 2.0), (1_000_000, 3.0)),
              completion_tiers=((200_000, 6.0),))


@pytest.mark.parametrize(("prompt", "completion", "expected"), [
    # at or below 200k prompt tokens: base prices
    (200_000, 1_000, 200_000 * 1.0 / 1e6 + 1_000 * 4.0 / 1e6),
    # one token past the start: every prompt AND completion token moves to the tier (cliff)
    (200_001, 1_000, 200_001 * 2.0 / 1e6 + 1_000 * 6.0 / 1e6),
    (1_000_000, 0, 1_000_000 * 2.0 / 1e6),
    # the highest tier crossed wins; the completion side has only the first tier
    (1_000_001, 1_000, 1_000_001 * 3.0 / 1e6 + 1_000 * 6.0 / 1e6),
    # completion tokens never move the tier
    (10, 5_000_000, 10 * 1.0 / 1e6 + 5_000_000 * 4.0 / 1e6),
])
def test_tiered_rate_cliff_rule(prompt, completion, expected):
    assert TIERED.cost(prompt, completion) == pytest.approx(expected, rel=1e-12)


@PROPS
@given(prompt=st.integers(min_value=0, max_value=10**9),
       completion=st.integers(min_value=0, max_value=10**9))
def test_tiered_cost_matches_a_hand_rule(prompt, completion):
    p = 3.0 if prompt > 1_000_000 else 2.0 if prompt > 200_000 else 1.0
    c = 6.0 if prompt > 200_000 else 4.0
    assert TIERED.cost(prompt, completion) == pytest.approx(
        (prompt * p + completion * c) / 1e6, rel=1e-12, abs=1e-15)


# PriceBook -----------------------------------------------------------------------------------


class CountingLookup:
    def __init__(self, rates: dict[str, Rate]) -> None:
        self.rates = rates
        self.calls: list[tuple[str, datetime]] = []

    def __call__(self, model: str, when: datetime) -> Rate | None:
        self.calls.append((model, when))
        return self.rates.get(model)


def test_override_beats_lookup():
    lookup = CountingLookup({"gpt-4o": Rate(2.5, 10.0, "genai-prices")})
    prices = PriceBook({"GPT-4o": Rate(1.0, 2.0, "override")}, lookup)
    assert prices.rate("gpt-4o", T0) == Rate(1.0, 2.0, "override")
    assert prices.rate(" Gpt-4O ", T0) == Rate(1.0, 2.0, "override")
    assert lookup.calls == []


def test_lookup_used_when_no_override():
    lookup = CountingLookup({"gpt-4o": Rate(2.5, 10.0, "genai-prices")})
    prices = PriceBook({"other": Rate(1.0, 2.0, "override")}, lookup)
    assert prices.rate("GPT-4o", T0) == Rate(2.5, 10.0, "genai-prices")
    assert lookup.calls == [("gpt-4o", WHEN)]


def test_lookup_cached_once_per_model_per_day():
    lookup = CountingLookup({"a": Rate(1.0, 1.0, "lib")})
    prices = PriceBook(lookup=lookup)
    for offset in (0, 1, DAY_MS // 2, DAY_MS - 1):
        assert prices.rate("a", T0 + offset) == Rate(1.0, 1.0, "lib")
        assert prices.rate("A", T0 + offset) == Rate(1.0, 1.0, "lib")
        assert prices.rate("unknown", T0 + offset) is None
    assert sorted(name for name, _ in lookup.calls) == ["a", "unknown"]
    # The next day asks again (prices have start dates).
    prices.rate("a", T0 + DAY_MS)
    prices.rate("a", T0 + DAY_MS + 5)
    assert [name for name, _ in lookup.calls].count("a") == 2
    assert lookup.calls[-1] == ("a", datetime(2026, 1, 2, tzinfo=UTC))


def test_no_lookup_means_overrides_only():
    prices = PriceBook({"m": Rate(1.0, 1.0, "override")}, lookup=None)
    assert prices.rate("m", T0) == Rate(1.0, 1.0, "override")
    assert prices.rate("gpt-4o", T0) is None


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_silly_model_names_are_not_looked_up(name):
    lookup = CountingLookup({})
    assert PriceBook(lookup=lookup).rate(name, T0) is None
    assert lookup.calls == []


# load_overrides ------------------------------------------------------------------------------


def test_load_overrides_toml(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."gpt-4o"]\nprompt = 2.5\ncompletion = 10\n\n'
                    '[models.DeepSeek-V3]\nprompt = 0.1\ncompletion = 0.42\n')
    assert load_overrides(path) == {
        "gpt-4o": Rate(2.5, 10.0, "override"),
        "deepseek-v3": Rate(0.1, 0.42, "override"),
    }


def test_load_overrides_json(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"m1": {"prompt": 1, "completion": 2.5}}}))
    assert load_overrides(path) == {"m1": Rate(1.0, 2.5, "override")}


def test_price_book_from_file(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models.m]\nprompt = 3\ncompletion = 4\n')
    prices = PriceBook.from_file(path, lookup=None)
    assert prices.rate("M", T0) == Rate(3.0, 4.0, "override")
    assert PriceBook.from_file(None, lookup=None).rate("m", T0) is None


@pytest.mark.parametrize(("name", "text", "message"), [
    ("p.toml", "models = [", "not valid"),
    ("p.json", "{models:", "not valid .json"),
    ("p.toml", "other = 1\n", "needs a [models."),
    ("p.json", "[1, 2]", "needs a [models."),
    ("p.json", '{"models": []}', "needs a [models."),
    ("p.toml", '[models.m]\nprompt = 1\n', "model 'm' needs numeric `prompt` and `completion`"),
    ("p.toml", '[models.m]\nprompt = "cheap"\ncompletion = 1\n', "model 'm' needs numeric"),
    ("p.toml", 'models = { m = 5 }\n', "model 'm' needs numeric"),
    ("p.json", '{"models": {"m": "2.5/10"}}', "model 'm' needs numeric"),
    ("p.toml", '[models.m]\nprompt = -1\ncompletion = 1\n', "model 'm' has a negative price"),
    ("p.toml", '[models.m]\nprompt = nan\ncompletion = 1\n', "model 'm'"),
    ("p.toml", '[models.m]\nprompt = 1\ncompletion = inf\n', "model 'm'"),
    ("p.json", '{"models": {"m": {"prompt": NaN, "completion": 1}}}', "model 'm'"),
])
def test_load_overrides_bad_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_overrides(path)
    assert message in info.value.message
    assert str(path) in info.value.message


def test_load_overrides_bad_bytes(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid"):
        load_overrides(path)


def test_load_overrides_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_overrides(path)
    assert info.value.message.startswith(f"cannot read price file {path}")


# library_lookup (genai-prices' bundled data, offline) ----------------------------------------


def test_library_lookup_gpt_4o(no_network):
    rate = library_lookup("gpt-4o", WHEN)
    assert rate is not None
    assert (rate.prompt, rate.completion, rate.source) == (2.5, 10.0, "genai-prices")


def test_library_lookup_unknown_model(no_network):
    assert library_lookup("no-such-model-from-holysheep-xyz", WHEN) is None


def test_library_lookup_through_the_price_book(no_network):
    prices = PriceBook()
    rate = prices.rate("GPT-4o-mini", T0)
    assert rate is not None and (rate.prompt, rate.completion) == (0.15, 0.6)
    assert rate.cost(1_000_000, 1_000_000) == pytest.approx(0.75)


@pytest.mark.parametrize("prompt", [1_000, 128_000, 128_001])
def test_library_tiers_agree_with_genai_prices_own_calculation(no_network, prompt):
    from genai_prices import Usage, calc_price

    model = "gemini-1.5-pro"
    rate = library_lookup(model, WHEN)
    assert rate is not None and rate.prompt_tiers
    expected = calc_price(Usage(input_tokens=prompt, output_tokens=1_000), model_ref=model,
                          genai_request_timestamp=WHEN).total_price
    assert rate.cost(prompt, 1_000) == pytest.approx(float(expected), rel=1e-9)
