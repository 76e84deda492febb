"""Webhook signatures: HolySheep HMAC-SHA256 hex and Standard Webhooks, pure and clock-injected."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from ingest.errors import (
    ConfigError,
    MalformedSignature,
    MissingSignature,
    SignatureMismatch,
    StaleTimestamp,
)

HOLYSHEEP_TIMESTAMP = "x-holysheep-timestamp"
HOLYSHEEP_SIGNATURE = "x-holysheep-signature"
STANDARD_ID = "webhook-id"
STANDARD_TIMESTAMP = "webhook-timestamp"
STANDARD_SIGNATURE = "webhook-signature"
HEADERS = (HOLYSHEEP_TIMESTAMP, HOLYSHEEP_SIGNATURE, STANDARD_ID, STANDARD_TIMESTAMP,
           STANDARD_SIGNATURE)

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,12}")
_MAX_HEADER = 4096


@dataclass(frozen=True)
class Secret:
    """One configured secret, pre-decoded for both schemes."""

    raw: bytes
    # Standard Webhooks secrets are `whsec_<base64>`; the library decodes them the standard way.
    standard: Webhook = field(repr=False)
    # Keyed once: copying a keyed HMAC is cheaper than keying one per request.
    keyed: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyed", hmac.new(self.raw, digestmod="sha256"))

    def hexdigest(self, message: bytes) -> str:
        mac = self.keyed.copy()
        mac.update(message)
        return mac.hexdigest()

    @classmethod
    def parse(cls, value: str) -> Secret:
        """Raises ConfigError for a secret that cannot be used (empty, or bad whsec_ base64)."""
        raw = value.encode()
        try:
            # The library raises its own exception types here, not ValueError.
            standard = Webhook(value) if value.startswith("whsec_") else Webhook(raw)
        except Exception:
            raise ConfigError("INGEST_WEBHOOK_SECRET: a whsec_ secret needs non-empty base64 "
                              "after the prefix (the Standard Webhooks format)") from None
        return cls(raw=raw, standard=standard)


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """HolySheep signature: lowercase hex HMAC-SHA256 over `<timestamp>.` + the raw body bytes."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.digest(key, str(timestamp).encode() + b"." + body, "sha256").hex()


def signed_headers(secret: str | bytes, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers a HolySheep sender attaches to `body` at `timestamp` (unix seconds)."""
    return {
        "X-HolySheep-Timestamp": str(timestamp),
        "X-HolySheep-Signature": sign(secret, timestamp, body),
    }


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[Secret],
    now: float,
    tolerance_s: int,
) -> None:
    """Raise a SignatureError unless `body` carries a valid signature by one of `secrets`.

    `headers` holds lowercase names. The HolySheep headers win when both schemes are present.
    """
    ts = headers.get(HOLYSHEEP_TIMESTAMP)
    sig = headers.get(HOLYSHEEP_SIGNATURE)
    if ts is not None or sig is not None:
        return _verify_holysheep(ts, sig, body, secrets, now, tolerance_s)
    if any(name in headers for name in (STANDARD_ID, STANDARD_TIMESTAMP, STANDARD_SIGNATURE)):
        return _verify_standard(headers, body, secrets, now, tolerance_s)
    raise MissingSignature(
        "send X-HolySheep-Timestamp and X-HolySheep-Signature (or the webhook-* headers)"
    )


def _check_timestamp(value: str, now: float, tolerance_s: int) -> int:
    value = value.strip()
    if len(value) == 13 and value.isdigit():
        raise MalformedSignature("timestamp looks like milliseconds; send unix seconds")
    if not _DIGITS.fullmatch(value):
        raise MalformedSignature("timestamp must be unix seconds")
    ts = int(value)
    if abs(now - ts) > tolerance_s:
        raise StaleTimestamp(f"timestamp is more than {tolerance_s}s from the receiver's clock")
    return ts


def _verify_holysheep(
    ts: str | None,
    sig: str | None,
    body: bytes,
    secrets: Sequence[Secret],
    now: float,
    tolerance_s: int,
) -> None:
    if not ts or not sig:
        missing = HOLYSHEEP_TIMESTAMP if not ts else HOLYSHEEP_SIGNATURE
        raise MissingSignature(f"missing {missing} header")
    _check_timestamp(ts, now, tolerance_s)
    sig = sig.strip()
    if sig[:7].lower() == "sha256=":
        sig = sig[7:]
    if not _HEX64.fullmatch(sig):
        raise MalformedSignature("signature must be 64 hex characters (HMAC-SHA256)")
    given = sig.lower()
    message = ts.strip().encode() + b"." + body
    matched = False
    for secret in secrets:
        # Check every secret so timing does not reveal which one matched.
        matched |= hmac.compare_digest(secret.hexdigest(message), given)
    if not matched:
        raise SignatureMismatch("signature does not match the body for any configured secret")


def _verify_standard(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[Secret],
    now: float,
    tolerance_s: int,
) -> None:
    msg_id = headers.get(STANDARD_ID, "").strip()
    ts_value = headers.get(STANDARD_TIMESTAMP, "")
    sig_value = headers.get(STANDARD_SIGNATURE, "")
    if not msg_id or not ts_value or not sig_value:
        raise MissingSignature("webhook-id, webhook-timestamp and webhook-signature are all needed")
    if len(msg_id) > _MAX_HEADER or len(sig_value) > _MAX_HEADER:
        raise MalformedSignature("webhook header too long")
    ts = _check_timestamp(ts_value, now, tolerance_s)
    given = _standard_signatures(sig_value)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise SignatureMismatch("body is not UTF-8, so no v1 signature can match") from None
    when = datetime.fromtimestamp(ts, tz=UTC)
    matched = False
    for secret in secrets:
        expected = base64.b64decode(secret.standard.sign(msg_id, when, text).split(",", 1)[1])
        for candidate in given:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureMismatch("no v1 signature matches the body for any configured secret")


def _standard_signatures(value: str) -> list[bytes]:
    """Decode the `v1,<base64>` entries; other versions are skipped as the spec says."""
    found: list[bytes] = []
    for entry in value.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not found:
        raise MalformedSignature("webhook-signature holds no well-formed v1,<base64> entry")
    return found


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A `webhook-signature` value for `body`, for senders and tests."""
    return Secret.parse(secret).standard.sign(
        msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
