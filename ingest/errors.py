"""The one error tree of holysheep-ingest, and the one map from it to HTTP statuses.

    IngestError
    ├── ConfigError                  bad or missing setting; the CLI prints it and exits 2,
    │                                the dashboard's API answers 400 (a bad query parameter)
    ├── AccessDenied                 -> 401: the dashboard's token is missing or wrong
    ├── NotFound                     -> 404: the dashboard's API has no such event
    ├── SignatureError               -> 401, `code` tells the sender why
    │   ├── MissingSignature         no timestamp/signature header
    │   ├── MalformedSignature       header present but not parseable
    │   ├── StaleTimestamp           outside the tolerance, either direction
    │   └── SignatureMismatch        well formed, no configured secret matches
    ├── PayloadError
    │   ├── PayloadTooLarge          -> 413 (raw or decompressed size over the limit)
    │   ├── UnsupportedMediaType     -> 415
    │   └── MalformedPayload         -> 400 (not JSON/NDJSON, bad gzip, empty)
    ├── EventInvalid                 one event failed validation: it is quarantined and the
    │                                body answered 202 beside the others (422 when none passed)
    ├── StoreError                   -> 503 with Retry-After
    │   ├── StoreFull                over the size limit or the disk nearly full
    │   └── StoreUnavailable         the writer failed or is stopped
    └── RemoteError                  a system we call (Elasticsearch, Logstash, Kibana, the
        │                            relay's usage endpoint); never reaches a webhook sender.
        │                            `ingest.remote` decides which is which
        ├── RemoteUnavailable        connection, timeout, 408, 429, 5xx but 501: retried, backoff
        ├── RemoteRefused            401/403/404/other whole-request refusals: shipping pauses
        │                            (a 400 from Elasticsearch is narrowed down to its event)
        └── VersionMismatch          server major differs from the client library's: stop

Anything else that escapes on the webhook path is a fault of the receiver: 500
`internal_error`, logged by type and place only, counted as `outcome="error"`.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error this package raises on purpose."""

    code = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class ConfigError(IngestError):
    code = "config_error"


class AccessDenied(IngestError):
    code = "unauthorized"


class NotFound(IngestError):
    code = "not_found"


class SignatureError(IngestError):
    code = "invalid_signature"


class MissingSignature(SignatureError):
    code = "missing_signature"


class MalformedSignature(SignatureError):
    code = "malformed_signature"


class StaleTimestamp(SignatureError):
    code = "stale_timestamp"


class SignatureMismatch(SignatureError):
    code = "signature_mismatch"


class PayloadError(IngestError):
    code = "bad_payload"


class PayloadTooLarge(PayloadError):
    code = "payload_too_large"


class UnsupportedMediaType(PayloadError):
    code = "unsupported_media_type"


class MalformedPayload(PayloadError):
    code = "malformed_payload"


class EventInvalid(IngestError):
    code = "invalid_event"


class StoreError(IngestError):
    code = "store_unavailable"


class StoreFull(StoreError):
    code = "store_full"


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class RemoteError(IngestError):
    code = "remote_error"

    def __init__(self, message: str = "", status: int | None = None, *,
                 error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type  # the remote's own name for the error, when it gave one


class RemoteUnavailable(RemoteError):
    code = "remote_unavailable"


class RemoteRefused(RemoteError):
    code = "remote_refused"


class VersionMismatch(RemoteError):
    code = "version_mismatch"


# Each error class: its HTTP status and the `outcome` it counts under in ingest_webhooks_total.
# ConfigError, AccessDenied and NotFound only come from the dashboard's API.
_STATUS: tuple[tuple[type[IngestError], int, str], ...] = (
    (SignatureError, 401, "unauthorized"),
    (PayloadTooLarge, 413, "too_large"),
    (UnsupportedMediaType, 415, "unsupported"),
    (MalformedPayload, 400, "malformed"),
    (StoreError, 503, "overloaded"),
    (ConfigError, 400, "bad_request"),
    (AccessDenied, 401, "unauthorized"),
    (NotFound, 404, "not_found"),
)


def http_status(exc: IngestError) -> int:
    """The HTTP status for an error of the tree; anything unmapped is the server's fault."""
    return _mapped(exc)[0]


def outcome(exc: IngestError) -> str:
    """The `outcome` label an error counts under in `ingest_webhooks_total`."""
    return _mapped(exc)[1]


def _mapped(exc: IngestError) -> tuple[int, str]:
    for cls, status, name in _STATUS:
        if isinstance(exc, cls):
            return status, name
    return 500, "error"
