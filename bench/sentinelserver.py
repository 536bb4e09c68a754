"""A throwaway Sentinel-managed Redis on loopback: one primary, replicas, three sentinels, for tests and the soak.

Every process is a real ``redis-server`` (sentinels run it with ``--sentinel``) on a free port in its own
temporary folder. ``url`` is the ``redis+sentinel://`` URL clients use; ``kill_primary()`` SIGKILLs the
current primary (a primary that dies for good) and ``wait_for_promotion()`` waits until the sentinels
name another one.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .devserver import RedisServer, RedisServerError, find_redis_server, free_port

SERVICE = "adclassify"


class SentinelServer(RedisServer):
    """One sentinel monitoring ``primary_port`` (quorum 2, down after ``down_after_ms``)."""

    def __init__(self, binary: str, primary_port: int, down_after_ms: int = 1000) -> None:
        super().__init__(binary)
        self.primary_port, self.down_after_ms = primary_port, down_after_ms

    def start(self, timeout_s: float = 10.0) -> SentinelServer:
        self.dir = self.dir or Path(tempfile.mkdtemp(prefix="sentinel-"))
        self.port = self.port or free_port()
        config = self.dir / "sentinel.conf"
        if not config.exists():  # a sentinel rewrites its own file: a restart keeps what it learnt
            config.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
        args = [self.binary, str(config), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir)]
        with open(self.dir / "redis.log", "ab") as log_file:
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        self._wait_for_ping(timeout_s)
        return self


class SentinelGroup:
    """A primary, ``replicas`` replicas and three sentinels; ``url`` for clients."""

    def __init__(self, replicas: int = 1, binary: str | None = None, down_after_ms: int = 1000) -> None:
        self.binary = binary or find_redis_server()
        self.primary = RedisServer(self.binary)
        self.replicas = [RedisServer(self.binary) for _ in range(replicas)]
        self.sentinels: list[SentinelServer] = []
        self.down_after_ms = down_after_ms

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/adclassify/0``."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelGroup:
        self.primary.start()
        for replica in self.replicas:
            replica.extra_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
            replica.start()
        self.sentinels = [SentinelServer(self.binary, self.primary.port, self.down_after_ms) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until(lambda: self.replicas_in_sync() == len(self.replicas), 30, "replicas to sync")
        self.wait_until(lambda: self._sentinels_know_each_other(), 30, "sentinels to find each other")
        return self

    def current_primary_port(self) -> int | None:
        """The primary's port as the sentinels name it (any sentinel that answers)."""
        for sentinel in self.sentinels:
            try:
                addr = redis.Redis(port=sentinel.port, socket_timeout=1).sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in (self.primary, *self.replicas) if s.port == port)

    def replicas_in_sync(self) -> int:
        port = self.current_primary_port() or self.primary.port
        info = redis.Redis(port=port, socket_timeout=1).info("replication")
        return sum(
            1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        )

    def _sentinels_know_each_other(self) -> bool:
        for sentinel in self.sentinels:
            info = redis.Redis(port=sentinel.port, socket_timeout=1).sentinel_master(SERVICE)
            if int(info.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def kill_primary(self) -> int:
        """SIGKILL the current primary (it stays dead); return its port."""
        port = self.current_primary_port()
        assert port is not None, "no primary named by the sentinels"
        server = self.server_on(port)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        return port

    def wait_for_promotion(self, old_port: int, timeout_s: float = 30.0) -> int:
        """Wait until the sentinels name a primary other than ``old_port`` that answers as a master; its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.current_primary_port()
            if port is None or port == old_port:
                return False
            try:
                role = redis.Redis(port=port, socket_timeout=1).info("replication").get("role")
            except redis.RedisError:
                return False
            found[:] = [port]
            return role == "master"

        self.wait_until(promoted, timeout_s, "a replica's promotion")
        return found[0]

    def revive(self, port: int) -> None:
        """Start the server that was on ``port`` again, as a replica of the current primary (a repaired node)."""
        server = self.server_on(port)
        primary = self.current_primary_port()
        server.extra_args = ["--replicaof", "127.0.0.1", str(primary)]
        server.start()

    @staticmethod
    def wait_until(condition: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if condition():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RedisServerError(f"timed out after {timeout_s} s waiting for {what}")

    def stop(self) -> None:
        for server in (*self.sentinels, self.primary, *self.replicas):
            server.stop()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
