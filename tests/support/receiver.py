"""Test tools that need other processes or the network: the receiver in a child process,
free ports, polling with a deadline, and whether Docker answers. Not part of the product."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from ingest.testing import SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `check` until it holds; AssertionError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # polling another process or thread, bounded by the deadline
    raise AssertionError(f"timed out waiting for {what}")


def docker_reachable() -> bool:
    """A quick ping of the Docker daemon (a few seconds at most, never the 60 s default)."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # docker.errors.DockerException, a refused or missing socket, a timeout
        return False


def store_counts(data_dir: Path) -> dict[str, int]:
    """Events by state in a store on disk, read while its receiver may be running."""
    from ingest.store import Reader

    with Reader(data_dir) as reader:
        return reader.counts()


class ReceiverProcess:
    """`holysheep-ingest serve` in a child process on 127.0.0.1, ready once /healthz answers."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None,
                 secret: str = SECRET, port: int | None = None,
                 cpu: int | None = None, python: Sequence[str] | None = None,
                 cwd: Path | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.tls = tls  # trusts the receiver's certificate: it serves HTTPS
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.webhook_url = self.url + "/webhooks/holysheep"
        self.env = {**os.environ, "INGEST_WEBHOOK_SECRET": secret,
                    "INGEST_MIN_FREE_DISK_BYTES": "0", "INGEST_LOG_LEVEL": "warning",
                    **(env or {})}
        self.cpu = cpu
        self.python = list(python or [sys.executable])  # another source tree: [exe, "-S"]
        self.cwd = cwd  # `-m ingest` finds the package in the working directory first
        self.log_path = self.data_dir.parent / f"receiver-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ReceiverProcess:
        cmd = [*self.python, "-m", "ingest", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log,
                                            cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}:\n"
                                   + self.log())
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0,
                             verify=self.tls or True).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness, bounded by the deadline
        self.kill()
        raise RuntimeError("receiver did not become healthy in time:\n" + self.log())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the graceful path."""
        if not self.process:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def rss_peak_kib(self) -> int:
        """VmHWM of the receiver (Linux), the peak resident set size."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
