"""The HTTP server: uvicorn's httptools protocol with request deadlines, a connection cap and a
lingering close; TLS; the descriptor limit raised at start.

uvicorn bounds only the idle time after a response (`timeout_keep_alive`): a connection that
never sends a byte, or dribbles its headers, holds its descriptor for ever. The protocol here
adds what nginx (`client_header_timeout`, `client_body_timeout`, `lingering_close`) and Go's
net/http (`ReadHeaderTimeout`, `ReadTimeout`) have, and answers connections over the cap
with a 503 at once, so the process never runs out of descriptors and into accept failures.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingest.errors import ConfigError
from ingest.metrics import Metrics

log = logging.getLogger("ingest.server")

# Descriptors kept out of the connection cap: the store's files and read connections, logs,
# the listening socket and the loop's own, the shipper's connections, refusals in flight.
RESERVED_DESCRIPTORS = 128
MAX_AUTO_CONNECTIONS = 10_000
MAX_REFUSING = 64  # refusals lingering at once; beyond, a connection over the cap is cut
KEEP_ALIVE_S = 5
LINGER_BODIES = 16  # an over-limit body is drained up to 16 times the body limit


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_connections: int
    retry_after_s: int
    # After an answer that left the request body unread (413, 415, 503), read and discard at
    # most this much for at most this long, so the client reads the answer, not a reset.
    linger_bytes: int = 16 << 20
    linger_s: float = 2.0


class Guard:
    """What every connection of one server shares: the limits, the counts, the metrics."""

    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        self.refusing = 0
        # Connections waiting for a request's headers, the longest waiting first: at the cap,
        # the first of them makes room for a new connection (a request in flight never does).
        self.waiting: dict[GuardedProtocol, None] = {}
        self.refusal = (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: %d\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (
                limits.retry_after_s, len(_REFUSAL_BODY), _REFUSAL_BODY))

    def admit(self) -> bool:
        """Room for one more connection, made by closing the longest idle one if need be."""
        if self.open < self.limits.max_connections:
            return True
        if not self.waiting:
            return False
        oldest = next(iter(self.waiting))
        oldest.cut("evicted")
        return True

    def count(self, change: int) -> None:
        self.open += change
        self.metrics.connections_open(self.open)


_REFUSAL_BODY = (b'{"error":"too_many_connections","message":"the receiver holds as many '
                 b'connections as INGEST_MAX_CONNECTIONS allows; retry later"}')


def protocol_class(guard: Guard) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn's `http=` that carries this server's guard."""
    return type("GuardedProtocol", (GuardedProtocol,), {"guard": guard})


class GuardedProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 with a header deadline, a body deadline and a lingering close."""

    guard: ClassVar[Guard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        if not guard.admit():
            guard.metrics.connection_refused()
            if guard.refusing >= MAX_REFUSING:
                transport.abort()
                return
            refusal = _Refusal(guard, self.loop)
            transport.set_protocol(refusal)
            refusal.connection_made(transport)
            return
        guard.count(+1)
        self._counted = True
        self._raw = transport
        self._timer: asyncio.TimerHandle | None = None
        self._in_message = False
        self._discarded = -1  # >= 0 while lingering
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm(guard.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted:
            self.guard.count(-1)
            self._counted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarded >= 0:
            self._discarded += len(data)
            if self._discarded > self.guard.limits.linger_bytes:
                self._raw.close()
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._arm(self.guard.limits.body_timeout, "body_timeout")  # no longer waiting
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered:  # answered before its body was read: wait for the next request's headers
            self._arm(self.guard.limits.header_timeout, "header_timeout")
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if pipelined:
            self._disarm()  # the next request is in already
        elif not self._in_message and not self._raw.is_closing():
            self._arm(self.guard.limits.header_timeout, "header_timeout")

    def linger_or_close(self) -> None:
        """uvicorn closes the connection: first let the client finish sending, if it is."""
        raw = self._raw
        if raw.is_closing():
            return
        if not self._in_message or self._discarded >= 0:
            raw.close()
            return
        self._discarded = 0
        if raw.can_write_eof():
            raw.write_eof()  # the answer is complete; the client sees it, then the end
        raw.resume_reading()
        self._disarm()
        self._timer = self.loop.call_later(self.guard.limits.linger_s, raw.close)

    def cut(self, reason: str) -> None:
        """Close now, counted under `reason`; the slot is free at once."""
        self._disarm()
        if self._raw.is_closing():
            return
        self.guard.metrics.connection_cut(reason)
        if self._counted:
            self.guard.count(-1)
            self._counted = False
        self._raw.close()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self.cut, reason)
        if reason == "header_timeout":
            self.guard.waiting[self] = None

    def _disarm(self) -> None:
        self.guard.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _LingeringTransport:
    """The connection's transport as uvicorn sees it, except that closing may linger first."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.linger_or_close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refusal(asyncio.Protocol):
    """A connection over the cap: 503 with Retry-After at once, then read briefly and close."""

    def __init__(self, guard: Guard, loop: asyncio.AbstractEventLoop) -> None:
        self.guard = guard
        self.loop = loop
        self.received = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the methods, not the asyncio.Transport base class.
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.guard.refusing += 1
        self.transport.write(self.guard.refusal)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.timer = self.loop.call_later(self.guard.limits.linger_s, self.transport.close)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.guard.limits.linger_bytes:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.refusing -= 1
        if self.timer is not None:
            self.timer.cancel()


def raise_descriptor_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    return soft, max(soft, target), hard


def connection_cap(wanted: int, soft_limit: int) -> int:
    """INGEST_MAX_CONNECTIONS, or (0) what the descriptor limit leaves, at most 10,000."""
    room = max(1, soft_limit - RESERVED_DESCRIPTORS)
    if wanted == 0:
        return min(room, MAX_AUTO_CONNECTIONS)
    if wanted > room:
        log.warning("INGEST_MAX_CONNECTIONS=%d is more than the descriptor limit leaves (%d); "
                    "using %d", wanted, room, room)
        return room
    return wanted


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    log_level: str
    tls: tuple[Path, Path] | None = None


def tls_files(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """The certificate and key, checked now so a bad pair is one clear line, not a traceback."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both INGEST_TLS_CERT and INGEST_TLS_KEY "
                          "(serve --tls-cert and --tls-key)")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc.filename}: "
                          f"{exc.strerror}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"the TLS certificate {cert} and key {key} do not load: "
                          f"{getattr(exc, 'reason', None) or exc}") from None
    return cert, key


def serve(app: Any, listen: Listen, wanted: Limits, metrics: Metrics) -> None:
    """Run the receiver's server until it is told to stop.

    `wanted.max_connections` 0 means: as many as the descriptor limit leaves room for.
    """
    before, soft, hard = raise_descriptor_limit()
    limits = replace(wanted, max_connections=connection_cap(wanted.max_connections, soft))
    log.info("descriptors: soft limit %d (was %d), hard limit %d; at most %d connections, "
             "headers within %gs, bodies within %gs", soft, before, hard,
             limits.max_connections, limits.header_timeout, limits.body_timeout)
    tls = listen.tls
    config = uvicorn.Config(
        app, host=listen.host, port=listen.port, log_level=listen.log_level,
        access_log=False, proxy_headers=False, timeout_graceful_shutdown=15,
        timeout_keep_alive=KEEP_ALIVE_S, http=protocol_class(Guard(limits, metrics)),
        ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)
    uvicorn.Server(config).run()
