"""On a real, small ext4 file system: fill it to ENOSPC, restart while it is full, free space.

The receiver must come up answering 503 (never refuse to start), resume by itself once the
disk has room, and hold every acknowledged event exactly once. The file system is a loop
mount the test creates and removes; where mounting is not permitted the test is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from receiver import ReceiverProcess, wait_until

from ingest.sample import sample_events
from ingest.sender import request_for
from ingest.store import DB_NAME
from ingest.testing import SECRET

pytestmark = pytest.mark.integration

DISK_MIB = 50  # the size the problem was seen on
# Files taking part of the disk, deleted to give the receiver room again. Together they
# exceed anything the store can hold on what is left, so freeing them always allows a
# checkpoint of its whole WAL.
FILLERS_MIB = (4, 20)
HOUSEKEEPING_S = 2.0
ENV = {
    "INGEST_MIN_FREE_DISK_BYTES": "0",  # the operator's setting from the report: no floor
    "INGEST_HOUSEKEEPING": f"{HOUSEKEEPING_S:g}s",
    "INGEST_RETRY_AFTER_S": "1",
}
BATCH = 100
MAX_BATCHES = 1000  # 100,000 events: far more than the disk holds
RECOVERY_BOUND_S = 15.0  # beyond one housekeeping interval: a checkpoint and a measurement
MIB = 1 << 20


def _umount(mount: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)  # a process that just exited may still hold a file; bounded retries
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 file system of `DISK_MIB` MiB mounted on a folder of `tmp_path`."""
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkfs.ext4 not installed (Debian package e2fsprogs); CI installs it")
        pytest.skip("mkfs.ext4 not installed (apt-get install e2fsprogs)")
    if os.geteuid() != 0:
        pytest.skip("mounting a loop file system needs root")
    image = tmp_path / "disk.img"
    with open(image, "wb") as file:
        file.truncate(DISK_MIB * MIB)
    subprocess.run([mkfs, "-q", "-F", str(image)], check=True, capture_output=True)
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount a file system here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        _umount(mount)
        image.unlink()


@pytest.fixture
def receivers(small_disk: Path, tmp_path: Path) -> Iterator[Callable[..., ReceiverProcess]]:
    """Receivers on the small disk's store, logging beside it (a full disk takes no log);
    all stopped before it is unmounted."""
    started: list[ReceiverProcess] = []

    def start(data: str = "data") -> ReceiverProcess:
        receiver = ReceiverProcess(small_disk / data, env=ENV)
        receiver.log_path = tmp_path / f"receiver-{len(started)}.log"
        started.append(receiver)
        return receiver.start()

    yield start
    for receiver in started:
        receiver.stop()


def write_filler(path: Path, limit: int | None = None) -> int:
    """Write real blocks (zeros, not a sparse file) up to `limit` bytes or until ENOSPC."""
    chunk = bytes(64 << 10)
    written = 0
    with open(path, "wb", buffering=0) as file:
        while limit is None or written < limit:
            try:
                written += file.write(chunk if limit is None else chunk[:limit - written])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        os.fsync(file.fileno())
    return written


def free_bytes(folder: Path) -> int:
    disk = os.statvfs(folder)
    return disk.f_bavail * disk.f_frsize


def post(http: httpx.Client, url: str, count: int) -> tuple[httpx.Response, list[str]]:
    events = [orjson.dumps(e) for e in sample_events(count)]
    body, headers = request_for(events, SECRET)
    return http.post(url, content=body, headers=headers), [orjson.loads(e)["id"] for e in events]


def assert_full(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "store_full"
    assert response.headers["retry-after"] == "1"


def stored_ids(data_dir: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro",
                                            uri=True)) as conn:
        return [event_id for (event_id,) in conn.execute("SELECT event_id FROM events")]


def checkpoint_need(data_dir: Path) -> int:
    """What copying the WAL would add to the database file, read independently of the
    receiver: its size with the WAL minus its size on disk."""
    path = data_dir / DB_NAME
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        pages, size = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                       for name in ("page_count", "page_size"))
    return max(0, pages * size - path.stat().st_size)


def fill(http: httpx.Client, url: str, acked: list[str], refusals: int = 3) -> list[str]:
    """Post batches until `refusals` 503s (each must be store_full); their messages."""
    said: list[str] = []
    for _ in range(MAX_BATCHES):
        response, ids = post(http, url, BATCH)
        if response.status_code == 202:
            assert response.json() == {"accepted": BATCH, "duplicates": 0, "quarantined": 0}
            acked += ids
            continue
        assert_full(response)
        said.append(response.json()["message"])
        if len(said) == refusals:
            return said
    pytest.fail(f"no 503 after {MAX_BATCHES * BATCH} events")


def until_accepted(http: httpx.Client, receiver: ReceiverProcess, acked: list[str]) -> float:
    """Post until a 202, as a retrying relay would; seconds it took (within the bound)."""
    assert receiver.process is not None
    freed_at = time.monotonic()
    while True:
        response, ids = post(http, receiver.webhook_url, BATCH)
        if response.status_code == 202:
            acked += ids
            return time.monotonic() - freed_at
        assert_full(response)
        assert receiver.process.poll() is None, "receiver died while full"
        assert time.monotonic() - freed_at < HOUSEKEEPING_S + RECOVERY_BOUND_S, \
            "no 202 within the housekeeping interval plus the bound after freeing space"
        time.sleep(0.1)  # polling for recovery, bounded by the deadline above


def take_the_rest(disk: Path, name: str) -> int:
    """Fill what is left of `disk` (root may write into ext4's reserve); bytes taken."""
    taken = write_filler(disk / name)
    assert write_filler(disk / "one-more", MIB) < 64 << 10, "the disk is not full"
    (disk / "one-more").unlink()
    return taken


def test_full_disk_start_and_recovery(small_disk: Path,
                                      receivers: Callable[..., ReceiverProcess]) -> None:
    fillers = [small_disk / f"filler-{i}" for i in range(len(FILLERS_MIB))]
    for path, mib in zip(fillers, FILLERS_MIB, strict=True):
        assert write_filler(path, mib * MIB) == mib * MIB
    data = small_disk / "data"
    (small_disk / "empty").mkdir()  # a data dir given to a store that does not exist yet
    wal = data / f"{DB_NAME}-wal"
    figures: dict[str, object] = {"free_for_the_store": free_bytes(small_disk)}
    acked: list[str] = []
    receiver = receivers()
    with httpx.Client(timeout=30.0) as http:
        # 1. A running receiver meets ENOSPC in a commit: the test takes the rest of the disk
        # right after the first batch, before any checkpoint could let the WAL start over
        # (its next frames then go past the end of the file).
        response, ids = post(http, receiver.webhook_url, BATCH)
        assert response.status_code == 202, response.text
        acked += ids
        rest = take_the_rest(small_disk, "filler-rest")
        refusals = fill(http, receiver.webhook_url, acked)
        assert "the disk under the store is full" in refusals, f"no ENOSPC: {refusals}"
        figures["running_enospc"] = {"acknowledged": len(acked), "refusals": refusals}
        (small_disk / "filler-rest").unlink()
        figures["running_enospc"]["freed"] = rest  # type: ignore[index]
        figures["running_enospc"]["seconds_to_202"] = round(  # type: ignore[index]
            until_accepted(http, receiver, acked), 2)
        assert "the store takes writes again" in receiver.log()

        # 2. Fill until it refuses, take what is left, restart on the full disk.
        figures["fill_refusal"] = fill(http, receiver.webhook_url, acked, refusals=1)[0]
        take_the_rest(small_disk, "filler-rest")
        assert_full(post(http, receiver.webhook_url, BATCH)[0])
        figures["acknowledged_at_fill"] = len(acked)
        figures["wal_bytes_at_fill"] = wal.stat().st_size
        figures["db_bytes_at_fill"] = (data / DB_NAME).stat().st_size
        assert receiver.stop() in (0, -signal.SIGTERM)
        receiver = receivers()  # raises if it does not come up: exit or no /healthz
        assert receiver.process is not None
        assert http.get(receiver.url + "/healthz").status_code == 200
        ready = http.get(receiver.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "store_full"
        assert ready.headers["retry-after"] == "1"
        figures["readyz_while_full"] = ready.json()["message"]
        assert_full(post(http, receiver.webhook_url, BATCH)[0])
        # It keeps refusing through housekeeping rounds, and says what it waits for.
        wait_until(lambda: "is not checkpointed yet" in receiver.log(), 3 * HOUSEKEEPING_S + 5,
                   "a checkpoint attempt on the housekeeping timer")
        assert "waiting for room on the disk" in receiver.log()
        assert_full(post(http, receiver.webhook_url, BATCH)[0])
        # A new store on the full disk: it cannot even be created, and still the receiver
        # comes up, answering 503.
        fresh = receivers("empty")
        ready = http.get(fresh.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "store_full", ready.text
        figures["readyz_new_store_while_full"] = ready.json()["message"]
        assert_full(post(http, fresh.webhook_url, 1)[0])
        fresh.stop()
        figures["checkpoint_need_while_full"] = checkpoint_need(data)
        figures["wal_bytes_while_full"] = wal.stat().st_size

        # 3. Room again: it takes writes by itself within a housekeeping interval.
        for path in (*fillers, small_disk / "filler-rest"):
            path.unlink()
        figures["seconds_to_202_after_restart"] = round(until_accepted(http, receiver, acked), 2)
        assert http.get(receiver.url + "/readyz").status_code == 200
        wait_until(lambda: "gave its" in receiver.log(), RECOVERY_BOUND_S, "the WAL truncated")
        figures["wal_bytes_after_recovery"] = wal.stat().st_size
        for _ in range(5):
            response, ids = post(http, receiver.webhook_url, BATCH)
            assert response.status_code == 202, response.text
            acked += ids
    assert receiver.stop() in (0, -signal.SIGTERM)

    stored = stored_ids(data)
    assert len(stored) == len(set(stored))
    assert set(acked) - set(stored) == set(), "acknowledged events are missing"
    assert set(stored) == set(acked), "events stored that were never acknowledged"
    figures["acknowledged_total"] = len(acked)
    print("\ndisk-full figures:", orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
