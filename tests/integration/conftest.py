"""Fixtures for integration tests: real receiver processes on 127.0.0.1 and HTTP clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from faults import FaultBulkServer
from receiver import ReceiverProcess

from ingest.store import Reader
from ingest.testing import SECRET

StartReceiver = Callable[..., ReceiverProcess]


class _Receivers:
    """Starts receivers under one base directory and stops every one of them at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[ReceiverProcess] = []

    def __call__(self, env: Mapping[str, str] | None = None, secret: str = SECRET,
                 data_dir: Path | None = None) -> ReceiverProcess:
        if data_dir is None:
            data_dir = self.base / f"receiver-{len(self.started)}" / "data"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        receiver = ReceiverProcess(data_dir, env=env, secret=secret)
        self.started.append(receiver)
        return receiver.start()

    def stop_all(self) -> None:
        for receiver in self.started:
            receiver.stop()


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[StartReceiver]:
    """Factory for receivers private to one test (own data dir, own env); all stopped after."""
    receivers = _Receivers(tmp_path)
    yield receivers
    receivers.stop_all()


@pytest.fixture(scope="module")
def module_receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartReceiver]:
    """Factory for receivers shared by the tests of one module."""
    receivers = _Receivers(tmp_path_factory.mktemp("receivers"))
    yield receivers
    receivers.stop_all()


# Small body limit so 413s are cheap; debug logging so the log check has something to read.
API_ENV = {"INGEST_MAX_BODY_BYTES": "65536", "INGEST_LOG_LEVEL": "debug"}


@pytest.fixture(scope="module")
def receiver(module_receivers: StartReceiver) -> ReceiverProcess:
    """One receiver shared by a module whose tests use distinct event ids."""
    return module_receivers(env=API_ENV)


@pytest.fixture
def client(receiver: ReceiverProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=receiver.url, timeout=10.0) as http:
        yield http


@pytest.fixture
def reader(receiver: ReceiverProcess) -> Iterator[Reader]:
    store = Reader(receiver.data_dir)
    yield store
    store.close()


@pytest.fixture
def server() -> Iterator[FaultBulkServer]:
    """The fault-injection bulk server (a test tool for retry logic), answering normally."""
    with FaultBulkServer() as srv:
        yield srv
