"""The relay's quota as the dashboard shows it: the gauges' values and the last poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ingest.metrics import RelayQuota
from ingest.records import iso_ms


class QuotaView:
    """Stands between the usage poller and the quota gauges, remembering the last poll.

    Holds numbers, times and a failure reason only: never the endpoint's key or address.
    """

    def __init__(self, gauges: RelayQuota | None, clock: Callable[[], float] = time.time) -> None:
        self.gauges, self.clock = gauges, clock
        self.polled_at: float | None = None
        self.state: str | None = None

    def succeeded(self, remaining: float, total: float, at: float) -> None:
        if self.gauges is not None:
            self.gauges.succeeded(remaining, total, at)
        self.polled_at, self.state = at, "ok"

    def failed(self, reason: str) -> None:
        if self.gauges is not None:
            self.gauges.failed(reason)
        self.polled_at, self.state = self.clock(), reason

    def answer(self) -> dict[str, Any]:
        if self.gauges is None:
            return {"configured": False}
        last = self.gauges.last_success
        return {"configured": True, "remaining": self.gauges.remaining,
                "limit": self.gauges.total, "state": self.state,
                "last_polled": _iso(self.polled_at), "last_success": _iso(last)}


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else iso_ms(int(seconds * 1000))
