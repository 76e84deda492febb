"""The Kibana import over a real socket: a refused connection is retried, never a secret shown.
(Everything answered is tested over httpx's mock transport in tests/unit/admin.)"""

from __future__ import annotations

import asyncio

import pytest
from receiver import free_port

from ingest.admin.kibana import import_saved_objects, saved_objects_path
from ingest.errors import RemoteUnavailable

pytestmark = pytest.mark.integration


def test_connection_refused_is_unavailable() -> None:
    with pytest.raises(RemoteUnavailable) as caught:
        asyncio.run(asyncio.wait_for(import_saved_objects(
            f"http://127.0.0.1:{free_port()}", username="elastic", password="pw-not-shown",
            api_key=None, ca_cert=None, path=saved_objects_path(), timeout=5), 20))
    assert "cannot connect" in caught.value.message
    assert "pw-not-shown" not in caught.value.message
