"""A throw-away redis-server for the tests (Debian's package, installed by ``make test``).

Loopback only, a free port, no persistence (``--save ''``, ``--appendonly no``), working files in
a temporary directory; started once per session by the ``redis_server`` fixture in conftest.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server_binary"]

MISSING = (
    "redis-server is not installed: run `make test` as root (scripts/install_test_tools.sh) "
    "or apt-get install redis-server"
)


def redis_server_binary() -> str:
    """The redis-server path; a missing binary skips the test locally and fails it under CI=true."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    try:
        import redis  # noqa: F401
    except ImportError:
        message = "the redis package is not installed: pip install -e '.[dev]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flags(port: int, directory: Path, log: Path) -> list[str]:
    """Loopback only, no persistence, files in ``directory``, in the foreground."""
    return [
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(directory), "--logfile", str(log), "--daemonize", "no"),
    ]


class RedisServer:
    """One redis-server process; :attr:`url` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, binary: str, *extra: str) -> None:
        self.binary = binary
        #: More redis-server flags, e.g. ``("--requirepass", "secret")``.
        self.extra = extra
        self.directory = Path(tempfile.mkdtemp(prefix="attribsdk-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def password(self) -> str | None:
        flags = list(self.extra)
        return flags[flags.index("--requirepass") + 1] if "--requirepass" in flags else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        import redis

        last = "no attempt"
        for _ in range(3):  # a port taken between choosing and binding: try another
            self.port = _free_port()
            log = self.directory / "redis.log"
            self.proc = subprocess.Popen(
                [self.binary, *_flags(self.port, self.directory, log), *self.extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5, password=self.password)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if client.ping():
                        client.close()
                        return self
                except redis.exceptions.ConnectionError as exc:
                    last = str(exc)
                time.sleep(0.05)
            client.close()
            last = log.read_text(errors="replace")[-2000:] if log.exists() else last
            self.stop()
        raise RuntimeError(f"redis-server did not answer PING: {last}")

    def flush(self) -> None:
        import redis

        with redis.Redis(port=self.port, password=self.password) as client:
            client.flushall()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
