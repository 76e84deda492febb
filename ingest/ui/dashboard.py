"""Mounts the dashboard on the receiver's app: the gate, the read pool, the quota view."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI

from ingest.metrics import RelayQuota
from ingest.settings import Settings
from ingest.ui import access, api, page
from ingest.ui.quota import QuotaView


class Dashboard:
    """`/ui/` and `/api/v1/` for one receiver; refuses to exist open beyond loopback."""

    def __init__(self, settings: Settings, quota: RelayQuota | None,
                 clock: Callable[[], float] = time.time) -> None:
        access.check(settings)
        token = settings.ui_token.get_secret_value() if settings.ui_token else None
        # Open only on loopback without a token; a token set is asked for anywhere.
        self.gate = access.Gate(token)
        self.quota = QuotaView(quota, clock)
        self.readers = api.Readers(settings.data_dir)
        self.secure_cookie = bool(settings.tls_cert and settings.tls_key)
        self.clock = clock

    def mount(self, app: FastAPI) -> None:
        app.include_router(api.build_router(self.readers, self.gate, self.quota, self.clock))
        app.include_router(page.build_router(self.gate, self.secure_cookie))

    def close(self) -> None:
        self.readers.close()
