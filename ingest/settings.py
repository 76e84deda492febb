"""Settings from `INGEST_*` environment variables (pydantic-settings), built by the CLI or app."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ingest.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)


def parse_duration(value: Any) -> Any:
    """`30d`, `72h`, `15m`, `10s`, `500ms` or plain seconds -> timedelta."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError("use a number with a unit: 500ms, 10s, 15m, 72h, 30d, 2w")
        number, unit = match.groups()
        return timedelta(seconds=float(number) * _UNITS[(unit or "s").lower()])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
# A JSON field, or a dotted path into nested objects (`data.remaining`; a number picks a list item).
_FIELD_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")
UI_TOKEN_MIN = 16
NO_SECRET = (
    "no webhook secret is set. Set INGEST_WEBHOOK_SECRET to the secret configured on the "
    "HolySheep relay (several, comma-separated, while rotating), for example:\n"
    "  export INGEST_WEBHOOK_SECRET=\"$(python -c 'import secrets; print(secrets.token_hex(32))')\""
)


class Settings(BaseSettings):
    """Every setting is `INGEST_<NAME>` in the environment; CLI flags override."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore",
                                      validate_default=True)

    webhook_secret: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="secret(s) shared with the relay, comma-separated")
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    signature_tolerance_s: int = Field(default=300, ge=1)
    max_body_bytes: ByteSize = Field(default=ByteSize(1 << 20), gt=0)
    dedup_window: Duration = timedelta(hours=72)
    retention: Duration = timedelta(days=30)
    max_store_bytes: ByteSize = Field(default=ByteSize(10 << 30), gt=0)
    min_free_disk_bytes: ByteSize = ByteSize(100 << 20)
    store_sync: Literal["full", "normal"] = "full"
    housekeeping: Duration = timedelta(seconds=30)
    retry_after_s: int = Field(default=30, ge=1)
    price_file: Path | None = None
    cost_tolerance: float = Field(default=0.01, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    header_timeout: Duration = timedelta(seconds=10)
    body_timeout: Duration = timedelta(seconds=30)
    max_connections: int = Field(default=0, ge=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    # Elasticsearch: shipping runs inside `serve` when a URL is set.
    elasticsearch_url: str | None = None
    elasticsearch_api_key: SecretStr | None = None
    elasticsearch_username: str | None = None
    elasticsearch_password: SecretStr | None = None
    elasticsearch_ca_cert: Path | None = None
    elasticsearch_verify_certs: bool = True
    elasticsearch_timeout: Duration = timedelta(seconds=30)
    data_stream: str = Field(default="logs-holysheep.requests-default",
                             pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=200)
    ilm_rollover_max_age: str = Field(default="1d", pattern=r"^[0-9]+(d|h|m|s)$")
    ilm_rollover_max_primary_shard_size: str = Field(default="5gb",
                                                      pattern=r"^[0-9]+(b|kb|mb|gb|tb)$")
    ilm_delete_after: str = Field(default="30d", pattern=r"^[0-9]+(d|h|m|s)$")
    kibana_url: str | None = None
    kibana_username: str | None = None
    kibana_password: SecretStr | None = None
    kibana_api_key: SecretStr | None = None
    kibana_ca_cert: Path | None = None
    sink: Literal["auto", "elasticsearch", "logstash"] = "auto"
    logstash_url: str | None = None
    logstash_username: str | None = None
    logstash_password: SecretStr | None = None
    ship_batch_docs: int = Field(default=1000, ge=1, le=100_000)
    ship_batch_bytes: ByteSize = Field(default=ByteSize(5_000_000), ge=1024)
    ship_concurrency: int = Field(default=2, ge=1, le=64)
    ship_backoff_initial: Duration = timedelta(milliseconds=500)
    ship_backoff_max: Duration = timedelta(seconds=60)
    ship_idle_poll: Duration = timedelta(milliseconds=200)

    # The relay's usage endpoint: `serve` polls it for the quota when a URL is set.
    relay_usage_url: str | None = None
    relay_api_key: SecretStr | None = None
    relay_usage_interval: Duration = timedelta(seconds=60)
    relay_usage_timeout: Duration = timedelta(seconds=10)
    relay_usage_remaining_field: str = "remaining"
    relay_usage_total_field: str = "total"

    # The built-in dashboard and its JSON API (`ingest.ui`).
    ui: bool = Field(default=True, description="serve /ui/ and /api/v1/; off disables both")
    ui_token: SecretStr | None = Field(
        default=None, description="bearer token for /ui/ and /api/v1/; required when "
        "INGEST_HOST is beyond loopback")

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("housekeeping", "retention", "dedup_window", "ship_backoff_initial",
                     "ship_backoff_max", "ship_idle_poll", "elasticsearch_timeout",
                     "header_timeout", "body_timeout", "relay_usage_interval",
                     "relay_usage_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=10):
            raise ValueError("must be at least 10ms")
        return value

    @field_validator("relay_usage_url", "relay_api_key", "ui_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `KEY=` in an env file or compose's `${KEY:-}` means "not set", not "empty".
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("relay_usage_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, for example "
                             "https://relay.example/v1/usage")
        return value

    @field_validator("relay_api_key", "ui_token")
    @classmethod
    def _header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        # Sent in a header: whitespace or control characters would break or split it. The
        # message never repeats the value.
        if value is not None and not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("must be one token of printable characters, without spaces")
        return value

    @field_validator("ui_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < UI_TOKEN_MIN:
            raise ValueError(f"must be at least {UI_TOKEN_MIN} characters (a random one: "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return value

    @field_validator("relay_usage_remaining_field", "relay_usage_total_field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        if not _FIELD_PATH.fullmatch(value):
            raise ValueError("use a JSON field name or a dotted path such as data.remaining")
        return value

    @model_validator(mode="after")
    def _relay_usage_pair(self) -> Settings:
        if self.relay_api_key is not None and self.relay_usage_url is None:
            raise ValueError("INGEST_RELAY_API_KEY is set but INGEST_RELAY_USAGE_URL is not: set "
                             "the relay's usage endpoint too, or unset the key")
        if self.relay_usage_url is not None and self.relay_api_key is None:
            raise ValueError("INGEST_RELAY_USAGE_URL is set but INGEST_RELAY_API_KEY is not: the "
                             "usage endpoint needs the relay's API key (sent as a Bearer token)")
        return self

    @model_validator(mode="after")
    def _retention_covers_dedup(self) -> Settings:
        if self.retention < self.dedup_window:
            raise ValueError("INGEST_RETENTION must be at least INGEST_DEDUP_WINDOW: duplicates "
                             "are found among the events the store still holds")
        return self

    def sink_kind(self) -> str | None:
        """Where shipping goes: `elasticsearch`, `logstash`, or None (store only)."""
        if self.sink == "auto":
            return ("elasticsearch" if self.elasticsearch_url
                    else "logstash" if self.logstash_url else None)
        return self.sink

    def secrets(self) -> list[str]:
        """The configured secrets in clear; raises ConfigError when there are none."""
        values = [s.get_secret_value() for s in self.webhook_secret]
        if not values:
            raise ConfigError(NO_SECRET)
        return values


def load(**overrides: Any) -> Settings:
    """Settings from the environment with `overrides` (None means not given) on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            name = "INGEST_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
            lines.append(f"{name or 'settings'}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
