"""Signature verification: HolySheep HMAC-SHA256 hex and Standard Webhooks, checked by oracles.

The oracles are computed independently of `ingest.signing`: `hmac.new` for the HolySheep scheme
and the `standardwebhooks` library's own `Webhook.sign` for the `webhook-*` headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from ingest.errors import (
    ConfigError,
    MalformedSignature,
    MissingSignature,
    SignatureError,
    SignatureMismatch,
    StaleTimestamp,
)
from ingest.receive.signing import HEADERS, Secret, sign, sign_standard, signed_headers, verify

PROPS = settings(max_examples=200, deadline=None)
NOW = 1_700_000_000
TOLERANCE = 300

plain_secrets = st.text(min_size=1, max_size=80).filter(lambda s: not s.startswith("whsec_"))
whsec_secrets = st.binary(min_size=1, max_size=64).map(
    lambda key: "whsec_" + base64.b64encode(key).decode())
any_secret = st.one_of(plain_secrets, whsec_secrets)
# Unix seconds as the header carries them: 1 to 12 digits (13 digits means milliseconds).
timestamps = st.integers(min_value=0, max_value=10**12 - 1)
# The standard scheme goes through datetime, which stops at the year 9999.
std_timestamps = st.integers(min_value=0, max_value=253_402_300_799 - 7 * 86_400)
tolerances = st.integers(min_value=1, max_value=7 * 86_400)
# A webhook-id as an HTTP server hands it over: visible ASCII, no surrounding whitespace.
msg_ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)


def oracle_hex(secret: str, timestamp: int | str, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def oracle_standard(secret: str, msg_id: str, timestamp: int, text: str) -> str:
    """`v1,<base64>` from the standardwebhooks library itself (plain secrets are raw UTF-8)."""
    hook = Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())
    return hook.sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), text)


def holysheep(timestamp: int | str, signature: str) -> dict[str, str]:
    return {"x-holysheep-timestamp": str(timestamp), "x-holysheep-signature": signature}


def standard(msg_id: str, timestamp: int | str, signature: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature}


def standard_key(secret: str) -> bytes:
    """The HMAC key of the standard scheme: whsec_ secrets are base64, plain ones UTF-8."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def hmac_key_equivalent(a: str, b: str) -> bool:
    """HMAC pads short keys with zero bytes, so `k` and `k\\0` are the same key by design."""
    return a.encode().rstrip(b"\0") == b.encode().rstrip(b"\0")


# sign ---------------------------------------------------------------------------------------


@PROPS
@given(secret=any_secret, timestamp=timestamps, body=st.binary(max_size=512))
def test_sign_is_hmac_sha256_hex_over_timestamp_dot_raw_body(secret, timestamp, body):
    expected = oracle_hex(secret, timestamp, body)
    assert sign(secret, timestamp, body) == expected
    assert sign(secret.encode(), str(timestamp), body) == expected
    assert signed_headers(secret, body, timestamp) == {
        "X-HolySheep-Timestamp": str(timestamp),
        "X-HolySheep-Signature": expected,
    }


@PROPS
@given(secret=any_secret, timestamp=timestamps, body=st.binary(max_size=512))
def test_sign_is_not_the_articles_bytes_repr_bug(secret, timestamp, body):
    # The articles formatted bytes into an f-string, which signs the text "b'...'".
    buggy = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    assert sign(secret, timestamp, body) != buggy


def test_sign_known_vector():
    # From openssl, independent of Python:
    #   printf '1700000000.{}' | openssl dgst -sha256 -hmac s3cret
    #   printf "1700000000.b'{}'" | openssl dgst -sha256 -hmac s3cret   (the articles' bug)
    good = "97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
    buggy = "924ff5f1c7859b6c59fb4dc00f44adddcfc026a6b0694674ce58bf26ad06f85c"
    assert sign("s3cret", 1700000000, b"{}") == good
    assert sign("s3cret", "1700000000", b"{}") != buggy


# (a) correctly signed bodies are accepted -----------------------------------------------------


@PROPS
@given(
    secret=any_secret,
    body=st.binary(max_size=512),
    timestamp=timestamps,
    tolerance=tolerances,
    skew=st.floats(min_value=-1.0, max_value=1.0),
    prefix=st.sampled_from(["", "sha256=", "SHA256=", "Sha256="]),
    upper=st.booleans(),
)
def test_holysheep_signed_body_is_accepted(secret, body, timestamp, tolerance, skew, prefix,
                                           upper):
    signature = oracle_hex(secret, timestamp, body)
    if upper:
        signature = signature.upper()
    now = timestamp + skew * tolerance
    verify(holysheep(timestamp, prefix + signature), body, [Secret.parse(secret)], now, tolerance)


@PROPS
@given(secret=any_secret, body=st.text(max_size=300), msg_id=msg_ids, timestamp=std_timestamps,
       tolerance=tolerances, skew=st.floats(min_value=-1.0, max_value=1.0))
def test_standard_signed_body_is_accepted(secret, body, msg_id, timestamp, tolerance, skew):
    signature = oracle_standard(secret, msg_id, timestamp, body)
    assert signature.startswith("v1,")
    now = timestamp + skew * tolerance
    verify(standard(msg_id, timestamp, signature), body.encode(), [Secret.parse(secret)], now,
           tolerance)


@PROPS
@given(secret=any_secret, body=st.text(max_size=200), msg_id=msg_ids,
       others=st.lists(st.sampled_from(["v1,", "v2,", "v1a,", "v0,", "v1b,"]).flatmap(
           lambda version: st.binary(min_size=32, max_size=32).map(
               lambda raw: version + base64.b64encode(raw).decode())), max_size=4),
       position=st.integers(min_value=0, max_value=4))
def test_standard_any_of_several_signatures_may_match(secret, body, msg_id, others, position):
    good = oracle_standard(secret, msg_id, NOW, body)
    entries = list(others)
    entries.insert(min(position, len(entries)), good)
    verify(standard(msg_id, NOW, " ".join(entries)), body.encode(), [Secret.parse(secret)], NOW,
           TOLERANCE)


def test_sign_standard_matches_the_library():
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    body = b'{"id":"req_1"}'
    assert sign_standard(secret, "msg_1", NOW, body) == oracle_standard(
        secret, "msg_1", NOW, body.decode())
    assert sign_standard("plain", "msg_1", NOW, body) == oracle_standard(
        "plain", "msg_1", NOW, body.decode())
    # A whsec_ secret is base64-decoded for the standard scheme: whsec_<b64("plain")> is the
    # same key as the plain secret "plain", and not the same as the text "whsec_...".
    whsec_plain = "whsec_" + base64.b64encode(b"plain").decode()
    assert sign_standard(whsec_plain, "m", NOW, body) == sign_standard("plain", "m", NOW, body)
    assert sign_standard(whsec_plain, "m", NOW, body) != Webhook(whsec_plain.encode()).sign(
        "m", datetime.fromtimestamp(NOW, tz=UTC), body.decode())


def test_standard_other_versions_are_ignored_not_trusted():
    body = "hello"
    good = oracle_standard("k", "msg", NOW, body).split(",", 1)[1]
    # The right digest under another version tag must not count.
    with pytest.raises(MalformedSignature):
        verify(standard("msg", NOW, f"v2,{good} v1a,{good}"), body.encode(),
               [Secret.parse("k")], NOW, TOLERANCE)


def test_holysheep_headers_win_over_standard_ones():
    body = b'{"id":"x"}'
    headers = {**holysheep(NOW, sign("k", NOW, body)), **standard("m", NOW, "v1,AAAA")}
    verify(headers, body, [Secret.parse("k")], NOW, TOLERANCE)
    headers = {**holysheep(NOW, "0" * 64), **standard("m", NOW, oracle_standard(
        "k", "m", NOW, body.decode()))}
    with pytest.raises(SignatureMismatch):
        verify(headers, body, [Secret.parse("k")], NOW, TOLERANCE)


# (b) any change is rejected ----------------------------------------------------------------


@PROPS
@given(secret=any_secret, body=st.binary(max_size=256), other=st.binary(max_size=256))
def test_holysheep_changed_body_is_rejected(secret, body, other):
    assume(body != other)
    with pytest.raises(SignatureMismatch):
        verify(holysheep(NOW, oracle_hex(secret, NOW, body)), other, [Secret.parse(secret)],
               NOW, TOLERANCE)


@PROPS
@given(secret=any_secret, body=st.binary(max_size=256),
       shift=st.integers(min_value=-2 * TOLERANCE, max_value=2 * TOLERANCE))
def test_holysheep_changed_timestamp_is_rejected(secret, body, shift):
    assume(shift != 0)
    signature = oracle_hex(secret, NOW, body)
    expected = SignatureMismatch if abs(shift) <= TOLERANCE else StaleTimestamp
    with pytest.raises(expected):
        verify(holysheep(NOW + shift, signature), body, [Secret.parse(secret)], NOW, TOLERANCE)


@PROPS
@given(secret=any_secret, body=st.binary(max_size=256), data=st.data())
def test_holysheep_changed_signature_is_rejected(secret, body, data):
    signature = oracle_hex(secret, NOW, body)
    index = data.draw(st.integers(min_value=0, max_value=63), label="index")
    char = data.draw(st.sampled_from("0123456789abcdef").filter(
        lambda c: c != signature[index]), label="char")
    changed = signature[:index] + char + signature[index + 1:]
    with pytest.raises(SignatureMismatch):
        verify(holysheep(NOW, changed), body, [Secret.parse(secret)], NOW, TOLERANCE)


@PROPS
@given(secret=any_secret, body=st.binary(max_size=256),
       mangle=st.sampled_from(["drop", "extra", "nonhex", "space", "sha512"]))
def test_holysheep_misshapen_signature_is_malformed(secret, body, mangle):
    signature = oracle_hex(secret, NOW, body)
    changed = {
        "drop": signature[:-1],
        "extra": signature + "0",
        "nonhex": "g" + signature[1:],
        "space": signature[:32] + " " + signature[32:],
        "sha512": hmac.new(secret.encode(), f"{NOW}.".encode() + body,
                           hashlib.sha512).hexdigest(),
    }[mangle]
    with pytest.raises(MalformedSignature):
        verify(holysheep(NOW, changed), body, [Secret.parse(secret)], NOW, TOLERANCE)


@PROPS
@given(secret=any_secret, other=any_secret, body=st.binary(max_size=256))
def test_holysheep_other_secret_is_rejected(secret, other, body):
    assume(not hmac_key_equivalent(secret, other))
    with pytest.raises(SignatureMismatch):
        verify(holysheep(NOW, oracle_hex(secret, NOW, body)), body, [Secret.parse(other)], NOW,
               TOLERANCE)


@PROPS
@given(secret=any_secret, msg_id=msg_ids, body=st.text(max_size=200), data=st.data())
def test_standard_any_change_is_rejected(secret, msg_id, body, data):
    signature = oracle_standard(secret, msg_id, NOW, body)
    headers = standard(msg_id, NOW, signature)
    raw = body.encode()
    secrets = [Secret.parse(secret)]
    what = data.draw(st.sampled_from(["body", "id", "timestamp", "signature", "secret"]))
    if what == "body":
        other = data.draw(st.text(max_size=200).filter(lambda t: t != body))
        raw = other.encode()
    elif what == "id":
        headers["webhook-id"] = data.draw(msg_ids.filter(lambda m: m != msg_id))
    elif what == "timestamp":
        shift = data.draw(st.integers(min_value=-TOLERANCE, max_value=TOLERANCE).filter(bool))
        headers["webhook-timestamp"] = str(NOW + shift)
    elif what == "signature":
        digest = bytearray(base64.b64decode(signature.split(",", 1)[1]))
        index = data.draw(st.integers(min_value=0, max_value=len(digest) - 1))
        digest[index] ^= data.draw(st.integers(min_value=1, max_value=255))
        headers["webhook-signature"] = "v1," + base64.b64encode(bytes(digest)).decode()
    else:
        other = data.draw(any_secret.filter(lambda s: s != secret))
        assume(standard_key(other).rstrip(b"\0") != standard_key(secret).rstrip(b"\0"))
        secrets = [Secret.parse(other)]
    with pytest.raises(SignatureMismatch):
        verify(headers, raw, secrets, NOW, TOLERANCE)


def test_standard_stale_timestamp_is_rejected():
    body = "x"
    ts = NOW - TOLERANCE - 1
    with pytest.raises(StaleTimestamp):
        verify(standard("m", ts, oracle_standard("k", "m", ts, body)), body.encode(),
               [Secret.parse("k")], NOW, TOLERANCE)


def test_standard_body_that_is_not_utf8_is_a_mismatch():
    with pytest.raises(SignatureMismatch):
        verify(standard("m", NOW, "v1," + base64.b64encode(b"\0" * 32).decode()), b"\xff\xfe",
               [Secret.parse("k")], NOW, TOLERANCE)


# (c) bad headers of any shape --------------------------------------------------------------

header_values = st.one_of(
    st.text(max_size=80),
    st.just(str(NOW)),
    st.integers(min_value=-10**14, max_value=10**14).map(str),
    st.binary(min_size=0, max_size=40).map(lambda b: "v1," + base64.b64encode(b).decode()),
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256=" + b.hex()),
    st.text(st.sampled_from("0123456789abcdefABCDEF"), min_size=60, max_size=70),
)


@PROPS
@given(headers=st.dictionaries(st.sampled_from([*HEADERS, "content-type", "x-other"]),
                               header_values, max_size=6),
       body=st.binary(max_size=64), secrets=st.lists(any_secret, min_size=1, max_size=3))
def test_bad_headers_only_ever_raise_signature_errors(headers, body, secrets):
    with pytest.raises(SignatureError):
        verify(headers, body, [Secret.parse(s) for s in secrets], NOW, TOLERANCE)


@pytest.mark.parametrize(("headers", "error"), [
    ({}, MissingSignature),
    ({"content-type": "application/json"}, MissingSignature),
    ({"x-holysheep-timestamp": str(NOW)}, MissingSignature),
    ({"x-holysheep-signature": "0" * 64}, MissingSignature),
    ({"x-holysheep-timestamp": "", "x-holysheep-signature": "0" * 64}, MissingSignature),
    ({"x-holysheep-timestamp": "soon", "x-holysheep-signature": "0" * 64}, MalformedSignature),
    ({"x-holysheep-timestamp": "-5", "x-holysheep-signature": "0" * 64}, MalformedSignature),
    ({"x-holysheep-timestamp": "1.7e9", "x-holysheep-signature": "0" * 64}, MalformedSignature),
    ({"x-holysheep-timestamp": "\u0661\u0667" + "\u0660" * 8, "x-holysheep-signature": "0" * 64},
     MalformedSignature),
    ({"x-holysheep-timestamp": str(NOW), "x-holysheep-signature": "zz"}, MalformedSignature),
    ({"webhook-id": "m"}, MissingSignature),
    ({"webhook-id": "m", "webhook-timestamp": str(NOW)}, MissingSignature),
    ({"webhook-id": " ", "webhook-timestamp": str(NOW), "webhook-signature": "v1,AAAA"},
     MissingSignature),
    ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,@@@"},
     MalformedSignature),
    ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1"},
     MalformedSignature),
    ({"webhook-id": "m" * 5000, "webhook-timestamp": str(NOW), "webhook-signature": "v1,AAAA"},
     MalformedSignature),
    ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,AAAA" * 1000},
     MalformedSignature),
    ({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,AAAA"},
     SignatureMismatch),
])
def test_bad_header_examples(headers, error):
    with pytest.raises(error) as info:
        verify(headers, b"{}", [Secret.parse("k")], NOW, TOLERANCE)
    assert type(info.value) is error


# (d) several secrets: rotation -------------------------------------------------------------


@PROPS
@given(secrets=st.lists(any_secret, min_size=1, max_size=5, unique=True), data=st.data(),
       body=st.text(max_size=200))
def test_any_configured_secret_may_match(secrets, data, body):
    signer = data.draw(st.sampled_from(secrets), label="signer")
    parsed = [Secret.parse(s) for s in secrets]
    raw = body.encode()
    verify(holysheep(NOW, oracle_hex(signer, NOW, raw)), raw, parsed, NOW, TOLERANCE)
    verify(standard("msg", NOW, oracle_standard(signer, "msg", NOW, body)), raw, parsed, NOW,
           TOLERANCE)


@PROPS
@given(secrets=st.lists(any_secret, min_size=1, max_size=5), stranger=any_secret,
       body=st.binary(max_size=200))
def test_a_secret_that_is_not_configured_never_matches(secrets, stranger, body):
    assume(not any(hmac_key_equivalent(stranger, s) for s in secrets))
    with pytest.raises(SignatureMismatch):
        verify(holysheep(NOW, oracle_hex(stranger, NOW, body)), body,
               [Secret.parse(s) for s in secrets], NOW, TOLERANCE)


def test_rotation_old_and_new_secret_both_work_until_removed():
    body = b'{"id":"r"}'
    both = [Secret.parse("old"), Secret.parse("new")]
    for key in ("old", "new"):
        verify(holysheep(NOW, sign(key, NOW, body)), body, both, NOW, TOLERANCE)
    with pytest.raises(SignatureMismatch):
        verify(holysheep(NOW, sign("old", NOW, body)), body, [Secret.parse("new")], NOW,
               TOLERANCE)


# (e) timestamp tolerance -------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["holysheep", "standard"])
@pytest.mark.parametrize(("offset", "ok"), [
    (TOLERANCE, True), (-TOLERANCE, True), (TOLERANCE + 1, False), (-TOLERANCE - 1, False),
    (TOLERANCE + 0.001, False), (0, True),
])
def test_tolerance_boundary_both_directions(scheme, offset, ok):
    body = "boundary"
    if scheme == "holysheep":
        headers = holysheep(NOW, sign("k", NOW, body.encode()))
    else:
        headers = standard("m", NOW, oracle_standard("k", "m", NOW, body))
    # The receiver's clock is `offset` seconds ahead of (or behind) the sender's timestamp.
    now = NOW + offset
    if ok:
        verify(headers, body.encode(), [Secret.parse("k")], now, TOLERANCE)
    else:
        with pytest.raises(StaleTimestamp):
            verify(headers, body.encode(), [Secret.parse("k")], now, TOLERANCE)


@PROPS
@given(tolerance=tolerances, offset=st.integers(min_value=1, max_value=10**6),
       direction=st.sampled_from([-1, 1]))
def test_outside_tolerance_is_stale_even_when_the_signature_is_right(tolerance, offset,
                                                                      direction):
    body = b"{}"
    headers = holysheep(NOW, sign("k", NOW, body))
    with pytest.raises(StaleTimestamp):
        verify(headers, body, [Secret.parse("k")], NOW + direction * (tolerance + offset),
               tolerance)


@pytest.mark.parametrize("scheme", ["holysheep", "standard"])
def test_millisecond_timestamp_is_malformed(scheme):
    ms = NOW * 1000
    body = "ms"
    if scheme == "holysheep":
        headers = holysheep(ms, oracle_hex("k", ms, body.encode()))
    else:
        headers = standard("m", ms, oracle_standard("k", "m", NOW, body))
    with pytest.raises(MalformedSignature, match="milliseconds"):
        verify(headers, body.encode(), [Secret.parse("k")], ms / 1000, TOLERANCE)


# Secret.parse --------------------------------------------------------------------------------


def test_whsec_secret_uses_base64_key_for_standard_and_text_for_holysheep():
    key = b"\x00\x01binary-key\xff"
    secret = "whsec_" + base64.b64encode(key).decode()
    parsed = Secret.parse(secret)
    assert parsed.raw == secret.encode()
    assert parsed.standard.sign("m", datetime.fromtimestamp(NOW, tz=UTC), "b") == Webhook(
        key).sign("m", datetime.fromtimestamp(NOW, tz=UTC), "b")


@pytest.mark.parametrize("value", ["", "whsec_", "whsec_!!!", "whsec_a"])
def test_unusable_secret_is_a_config_error(value):
    with pytest.raises(ConfigError) as info:
        Secret.parse(value)
    assert "INGEST_WEBHOOK_SECRET" in info.value.message
