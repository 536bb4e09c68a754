"""The soak's faults and fleet: worker processes to kill, freeze and restart; foreign queue entries;
a Redis that fills up; recovery timing (see ``bench.soak``)."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import redis

from producer import Producer, RedisFull
from producer.wire import keys as rqkeys

from .common import ROOT, pythonpath

WORKER_TTL_S = 3
FULL_S = 10.0  # how long Redis stays at its maxmemory
HOSTILE = [b"", b"\x00" * 64, b"\xff\xd8\xff\xe0 truncated jpeg", b"%PDF-1.4 not an image", b"GIF89a garbage"]


def push_foreign(conn: redis.Redis, n: int) -> tuple[list[str], int]:
    """Queue one foreign entry (cycling through four kinds): ids that are not UTF-8 (dropped, never
    answered), keys that are not hashes (answered job_gone), hashes without data or with non-numeric
    fields (answered bad_job_data). Returns (addressable ids, 1 if the id was not UTF-8 else 0)."""
    queue, kind = rqkeys.queue("classify"), n % 4
    if kind == 0:
        conn.rpush(queue, b"\xff\xfe-foreign-%d" % n)
        return [], 1
    job_id = f"foreign-{n}"
    if kind == 1:
        conn.set(rqkeys.job(job_id), "not a hash")
    elif kind == 2:
        conn.hset(rqkeys.job(job_id), mapping={"status": "queued", "origin": "classify"})
    else:
        conn.hset(rqkeys.job(job_id), mapping={"data": b"\x93", "status": "queued", "lost_deliveries": "x"})
    conn.rpush(queue, job_id)
    return [job_id], 0


class Fleet:
    """Worker processes that can be killed and restarted."""

    def __init__(self, url: str, model: str, size: int) -> None:
        self.url, self.model = url, model
        self.procs = [self._start() for _ in range(size)]
        self.crashes = 0  # exits we did not cause

    def check(self) -> None:
        """Restart (and count) any worker that exited on its own."""
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                self.crashes += 1
                self.procs[index] = self._start()

    def freeze(self, rng: random.Random, seconds: float) -> threading.Thread:
        """SIGSTOP a random worker for ``seconds`` (past its TTL: its jobs are re-queued), then SIGCONT."""
        victim = self.procs[rng.randrange(len(self.procs))]
        victim.send_signal(signal.SIGSTOP)

        def thaw() -> None:
            time.sleep(seconds)
            victim.send_signal(signal.SIGCONT)

        thread = threading.Thread(target=thaw, daemon=True)
        thread.start()
        return thread

    def _start(self) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "worker",
            "--model",
            self.model,
            "--redis-url",
            self.url,
            "--batch-size",
            "32",
            "--worker-ttl-s",
            str(WORKER_TTL_S),
            "--max-wait-ms",
            "5",
            "--log-level",
            "ERROR",
        ]
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()})

    def kill_one(self, conn: redis.Redis, rng: random.Random) -> tuple[float, set[str]]:
        """SIGKILL a random worker at a random moment; restart it."""
        index = rng.randrange(len(self.procs))
        victim = self.procs[index]
        victim.send_signal(signal.SIGSTOP)  # frozen: what it holds now is what it will lose
        jobs = _held_by_pid(conn).get(victim.pid, set())
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait()
        self.procs[index] = self._start()
        return killed_at, jobs

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)


def _held_by_pid(conn: redis.Redis) -> dict[int, set[str]]:
    held: dict[int, set[str]] = {}
    try:
        members = conn.zrange(rqkeys.started("classify"), 0, -1)
    except redis.ResponseError:  # WRONGTYPE: the mischief's hash stands there for a moment (its jobs wait)
        return held
    for member in members:
        name = conn.hget(rqkeys.EXECUTION_PREFIX.encode() + member, "worker_name")
        if name:
            pid = int(name.decode().rsplit(":", 1)[-1].split("-")[0])  # host:device:pid-token
            held.setdefault(pid, set()).add(member.decode().rsplit(":", 1)[0])
    return held


def final(conn: redis.Redis, ids: list[str]) -> dict[str, str]:
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(rqkeys.job(job_id), "status")
        replies = pipe.execute(raise_on_error=False)  # a foreign key of another type answers WRONGTYPE
        return {i: s.decode() if isinstance(s, bytes) else "gone" for i, s in zip(ids, replies, strict=False)}


def watch_recovery(conn: redis.Redis, killed_at: float, jobs: set[str], out: list) -> None:
    """Record how long until every job the killed worker held is finished or failed."""
    if not jobs:
        out.append(None)
        return
    while True:
        states = final(conn, list(jobs))
        if all(s in ("finished", "failed") for s in states.values()):
            out.append(time.monotonic() - killed_at)
            return
        if time.monotonic() - killed_at > 300:
            out.append(float("inf"))
            return
        time.sleep(0.05)


def enqueue_retrying(producer: Producer, images: list[bytes], counts: Counter) -> list[str]:
    """Enqueue, retrying a full Redis the way a web backend would (the call wrote nothing)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            return producer.enqueue_many(images)
        except RedisFull:
            counts["redis_full_refusals"] += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Faults:
    """The faults of one burst, by burst number ``k`` of ``kills + 1``."""

    def __init__(self, args: argparse.Namespace, conn: redis.Redis, fleet: Fleet, rng: random.Random) -> None:
        self.args, self.conn, self.fleet, self.rng = args, conn, fleet, rng
        self.recoveries: list = []
        self.threads: list[threading.Thread] = []
        self.counts: Counter = Counter()

    def mid_burst(self, k: int) -> None:
        if k >= self.args.kills:
            return
        killed_at, jobs = self.fleet.kill_one(self.conn, self.rng)
        self._spawn(watch_recovery, self.conn, killed_at, jobs, self.recoveries)
        if k == self.args.kills // 3:
            self.threads.append(self.fleet.freeze(self.rng, seconds=3 * WORKER_TTL_S))
            self.counts["frozen"] += 1
            used = int(self.conn.info("memory")["used_memory"])
            self.conn.config_set("maxmemory", used + (1 << 19))  # full within a burst
            self._spawn(self._lift_maxmemory, FULL_S)

    def _lift_maxmemory(self, seconds: float) -> None:
        """An operator gives Redis more memory ``seconds`` later (finished jobs keep their small results
        for their TTL, so with small photos draining alone may not free enough)."""
        time.sleep(seconds)
        self.conn.config_set("maxmemory", 0)  # redis-py clients are thread-safe

    def burst_start(self, k: int) -> None:
        if k == self.args.kills // 2:
            self.conn.client_kill_filter(_type="normal", skipme=True)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)
