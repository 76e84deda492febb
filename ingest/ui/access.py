"""Who may see the dashboard: open on loopback, a bearer token or a login cookie beyond it."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket

from ingest.errors import ConfigError
from ingest.settings import UI_TOKEN_MIN, Settings

COOKIE = "holysheep_ui"
_SESSION_LABEL = b"holysheep-ingest dashboard session"


def on_loopback(host: str) -> bool:
    """Whether listening on `host` reaches this machine only: a loopback address, or a name
    that resolves to loopback addresses only. Unresolvable names count as beyond."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return False
    try:
        return bool(found) and all(ipaddress.ip_address(str(address).split("%")[0]).is_loopback
                                   for address in found)
    except ValueError:
        return False


def check(settings: Settings) -> None:
    """Refuse a dashboard that would be open beyond this machine, saying what to do."""
    if settings.ui and settings.ui_token is None and not on_loopback(settings.host):
        raise ConfigError(
            f"INGEST_HOST={settings.host} listens beyond loopback, so the dashboard (/ui/, "
            "/api/v1/) needs a token. Set INGEST_UI_TOKEN (at least "
            f"{UI_TOKEN_MIN} characters), for example:\n"
            "  export INGEST_UI_TOKEN=\"$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')\"\n"
            "or turn the dashboard off with INGEST_UI=off.")


class Gate:
    """Checks a request's credentials against the token, in constant time.

    The login cookie holds an HMAC of the token, never the token itself.
    """

    def __init__(self, token: str | None) -> None:
        self._token = None if token is None else token.encode()
        self.session = None if token is None else hmac.new(
            token.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()

    @property
    def open(self) -> bool:
        return self._token is None

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        if self._token is None or self.session is None:
            return True
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(value.strip()):
                return True
        return cookie is not None and hmac.compare_digest(cookie.encode(),
                                                          self.session.encode())

    def token_matches(self, given: str) -> bool:
        if self._token is None:
            return True
        return hmac.compare_digest(given.encode(), self._token)
