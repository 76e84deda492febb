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

from ingest import durations
from ingest.errors import ConfigError

_TOKEN = re.compile(r"[\x21-\x7e]+")


def parse_duration(value: Any) -> Any:
    """`30d`, `72h`, `15m`, `10s`, `500ms` or plain seconds -> timedelta."""
    return durations.coerce(value)


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

    # The receiver --------------------------------------------------------------------------
    webhook_secret: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="secret(s) shared with the relay, comma-separated "
        "(required; several while rotating)")
    data_dir: Path = Field(Path("data"), description="store directory")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    signature_tolerance_s: int = Field(
        300, ge=1, description="allowed clock difference, both directions, in seconds")
    max_body_bytes: ByteSize = Field(ByteSize(1 << 20), gt=0,
                                     description="body limit, also after gunzip")
    dedup_window: Duration = Field(timedelta(hours=72), description="a repeated event id is "
                                   "stored once within it")
    retention: Duration = Field(timedelta(days=30), description="local retention, at least "
                                "the dedup window")
    max_store_bytes: ByteSize = Field(ByteSize(10 << 30), gt=0, description="answer 503 + "
                                      "Retry-After above this store size")
    min_free_disk_bytes: ByteSize = Field(ByteSize(100 << 20), description="... or when the "
                                          "disk has less free, beyond what a WAL checkpoint needs")
    store_sync: Literal["full", "normal"] = Field(
        "full", description="full: fsync each commit group; normal: survive crashes only")
    housekeeping: Duration = Field(timedelta(seconds=30), description="how often retention "
                                   "and the capacity check run")
    retry_after_s: int = Field(30, ge=1, description="Retry-After on 503, in seconds")
    price_file: Path | None = Field(None, description="TOML/JSON price overrides, USD per 1M "
                                    "tokens")
    cost_tolerance: float = Field(0.01, ge=0, description="relative difference above which "
                                  "cost_mismatch is true")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info",
                                                                    description="log level")
    header_timeout: Duration = Field(timedelta(seconds=10), description="a request's headers "
                                     "must arrive within this")
    body_timeout: Duration = Field(timedelta(seconds=30), description="... and its body within "
                                   "this after them")
    max_connections: int = Field(0, ge=0, description="open connections; more get 503 at once "
                                 "(0: from the descriptor limit, at most 10,000)")
    tls_cert: Path | None = Field(None, description="serve HTTPS with this certificate (PEM)")
    tls_key: Path | None = Field(None, description="... and this private key (PEM)")

    # Elasticsearch: shipping runs inside `serve` when a URL is set --------------------------
    elasticsearch_url: str | None = Field(None, description="ship to this cluster")
    elasticsearch_api_key: SecretStr | None = Field(None, description="API key (or "
                                                    "username and password)")
    elasticsearch_username: str | None = Field(None, description="basic auth user")
    elasticsearch_password: SecretStr | None = Field(None, description="basic auth password")
    elasticsearch_ca_cert: Path | None = Field(None, description="CA certificate (PEM) for "
                                               "https")
    elasticsearch_verify_certs: bool = Field(True, description="verify the cluster's "
                                             "certificate")
    elasticsearch_timeout: Duration = Field(timedelta(seconds=30), description="limit for one "
                                            "request to the cluster (or Logstash)")
    data_stream: str = Field("logs-holysheep.requests-default", pattern=r"^[a-z0-9][a-z0-9._-]*$",
                             max_length=200, description="the data stream events go to")
    ilm_rollover_max_age: str = Field("1d", pattern=r"^[0-9]+(d|h|m|s)$",
                                      description="roll over a backing index this old")
    ilm_rollover_max_primary_shard_size: str = Field(
        "5gb", pattern=r"^[0-9]+(b|kb|mb|gb|tb)$",
        description="... or with a primary shard this large")
    ilm_delete_after: str = Field("30d", pattern=r"^[0-9]+(d|h|m|s)$",
                                  description="delete indices this long after rollover")
    kibana_url: str | None = Field(None, description="Kibana, for setup --kibana")
    kibana_username: str | None = Field(None, description="Kibana basic auth user")
    kibana_password: SecretStr | None = Field(None, description="Kibana basic auth password")
    kibana_api_key: SecretStr | None = Field(None, description="Kibana API key")
    kibana_ca_cert: Path | None = Field(None, description="CA certificate (PEM) for Kibana")
    sink: Literal["auto", "elasticsearch", "logstash"] = Field(
        "auto", description="where to ship: auto takes the URL that is set")
    logstash_url: str | None = Field(None, description="ship to this Logstash http input")
    logstash_username: str | None = Field(None, description="Logstash basic auth user")
    logstash_password: SecretStr | None = Field(None, description="Logstash basic auth "
                                                "password")
    ship_batch_docs: int = Field(1000, ge=1, le=100_000, description="events per bulk request")
    ship_batch_bytes: ByteSize = Field(ByteSize(5_000_000), ge=1024,
                                       description="bytes per bulk request")
    ship_concurrency: int = Field(2, ge=1, le=64, description="bulk requests in flight")
    ship_backoff_initial: Duration = Field(timedelta(milliseconds=500),
                                           description="first retry delay")
    ship_backoff_max: Duration = Field(timedelta(seconds=60), description="longest retry delay")
    ship_idle_poll: Duration = Field(timedelta(milliseconds=200),
                                     description="how often an idle shipper looks for events")

    # The relay's usage endpoint: `serve` polls it for the quota when a URL is set ------------
    relay_usage_url: str | None = Field(None, description="the relay's usage endpoint: poll it "
                                        "for the quota")
    relay_api_key: SecretStr | None = Field(None, description="relay API key for it, sent as a "
                                            "Bearer token, never logged")
    relay_usage_interval: Duration = Field(timedelta(seconds=60), description="how often to "
                                           "poll")
    relay_usage_timeout: Duration = Field(timedelta(seconds=10), description="limit for one "
                                          "poll, at most the interval")
    relay_usage_remaining_field: str = Field("remaining", description="JSON field of the "
                                             "remaining quota, dotted for nested ones")
    relay_usage_total_field: str = Field("total", description="JSON field of the quota limit")

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


def env_name(field: str) -> str:
    return "INGEST_" + field.upper()


def shown_default(value: Any) -> str | None:
    """A default as a user would write it (`1MiB`, `72h`), or None when there is none."""
    if value is None or value == []:
        return None
    if isinstance(value, ByteSize):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
                           ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
            if value and value % size == 0:
                return f"{value // size}{unit}"
        return str(int(value))
    if isinstance(value, timedelta):
        return durations.shown(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def documented() -> list[tuple[str, str | None, str]]:
    """Every setting as (variable, default as written, description): one source for `--help`
    and the README's tables (a test holds the README to it)."""
    out = []
    for name, info in Settings.model_fields.items():
        default = None if info.default_factory is not None else info.default
        out.append((env_name(name), shown_default(default), info.description or ""))
    return out


def serve_epilog() -> str:
    """`serve --help`'s list of settings, from the field descriptions."""
    lines = ["settings (environment):"]
    for variable, default, description in documented():
        text = description + (f" (default {default})" if default is not None else "")
        lines.append(f"  {variable}")
        lines.extend(f"      {part}" for part in _wrap(text, 84))
    lines.append("")
    lines.append("durations: 500ms, 10s, 15m, 72h, 30d; sizes: 512KiB, 1MiB, 10GB")
    lines.append("endpoints: POST /webhooks/holysheep, GET /healthz, GET /readyz, GET /metrics, "
                 "GET /ui/ (the dashboard), GET /api/v1/... (its JSON API)")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


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
