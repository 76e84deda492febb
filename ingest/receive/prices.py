"""Model prices: a user override file first, then the genai-prices library, cached per model."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ingest.errors import ConfigError

_MAX_MODEL_NAME = 200
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens, with the cliff tiers genai-prices uses: `(start_tokens, price)`."""

    prompt: float
    completion: float
    source: str
    prompt_tiers: tuple[tuple[int, float], ...] = ()
    completion_tiers: tuple[tuple[int, float], ...] = ()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if not self.prompt_tiers and not self.completion_tiers:
            return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000
        # A tier applies to every token once the prompt crosses its start (genai-prices' rule).
        p = _tiered(self.prompt, self.prompt_tiers, prompt_tokens)
        c = _tiered(self.completion, self.completion_tiers, prompt_tokens)
        return (prompt_tokens * p + completion_tokens * c) / 1_000_000


def _tiered(base: float, tiers: tuple[tuple[int, float], ...], prompt_tokens: int) -> float:
    for start, price in reversed(tiers):
        if prompt_tokens > start:
            return price
    return base


Lookup = Callable[[str, datetime], Rate | None]


def library_lookup(model: str, when: datetime) -> Rate | None:
    """Rate from genai-prices' bundled snapshot (never fetched at run time), or None if unknown."""
    from genai_prices import data_snapshot

    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, None, None)
    except LookupError:
        return None
    prices = info.get_prices(when)
    prompt = _split(getattr(prices, "input_mtok", None))
    completion = _split(getattr(prices, "output_mtok", None))
    if prompt is None and completion is None:
        return None
    p_base, p_tiers = prompt or (0.0, ())
    c_base, c_tiers = completion or (0.0, ())
    return Rate(p_base, c_base, "genai-prices", p_tiers, c_tiers)


def _split(price: Any) -> tuple[float, tuple[tuple[int, float], ...]] | None:
    if price is None:
        return None
    if isinstance(price, Decimal | int | float):
        return float(price), ()
    tiers = tuple((int(t.start), float(t.price)) for t in getattr(price, "tiers", ()))
    return float(price.base), tiers


class PriceBook:
    """Resolves a model name to a Rate: override file, then the library; caches by model and day."""

    def __init__(self, overrides: Mapping[str, Rate] | None = None,
                 lookup: Lookup | None = library_lookup) -> None:
        self._overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self._lookup = lookup
        # By (name, day), under the name as sent and as normalised: the common case skips
        # normalising, and spellings of one model share one lookup.
        self._cache: dict[tuple[str, int], Rate | None] = {}

    @classmethod
    def from_file(cls, path: Path | None, lookup: Lookup | None = library_lookup) -> PriceBook:
        return cls(load_overrides(path) if path else None, lookup)

    def warm(self, when_ms: int) -> None:
        """Load the library's price data now rather than inside the first request."""
        if self._lookup is not None:
            self.rate("gpt-4o", when_ms)

    def rate(self, model: str, when_ms: int) -> Rate | None:
        day = when_ms // 86_400_000
        try:
            return self._cache[model, day]
        except KeyError:
            pass
        name = model.strip().lower()
        found = self._overrides.get(name)
        if found is not None or self._lookup is None or len(name) > _MAX_MODEL_NAME or not name:
            return found
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        if (name, day) not in self._cache:
            self._cache[name, day] = self._lookup(name, datetime.fromtimestamp(when_ms / 1000,
                                                                               UTC))
        found = self._cache[model, day] = self._cache[name, day]
        return found


def load_overrides(path: Path) -> dict[str, Rate]:
    """Read `{models: {name: {prompt: $/1M, completion: $/1M}}}` from TOML or JSON."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read price file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"price file {path} is not valid {path.suffix or 'TOML'}: {exc}") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(f"price file {path} needs a [models.\"<name>\"] table per model")
    rates: dict[str, Rate] = {}
    for name, entry in models.items():
        try:
            prompt, completion = float(entry["prompt"]), float(entry["completion"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"price file {path}: model {name!r} needs numeric `prompt` and `completion` "
                "(USD per 1M tokens)"
            ) from None
        if not (math.isfinite(prompt) and math.isfinite(completion)):
            raise ConfigError(f"price file {path}: model {name!r} has a price that is not finite")
        if prompt < 0 or completion < 0:
            raise ConfigError(f"price file {path}: model {name!r} has a negative price")
        rates[name.lower()] = Rate(prompt, completion, "override")
    return rates
