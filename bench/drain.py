"""Drain one pre-filled queue with a worker process and measure it: images/s, round trips and commands per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis

from producer import Producer
from producer.wire import keys as rqkeys

from .common import OUT, ROOT, commands_total, pythonpath

SERIALIZER = "producer.serializer.MsgpackSerializer"


@dataclass
class Drain:
    """What one drain measured."""

    runner: str
    jobs: int
    ok: int
    images_per_s: float
    round_trips_per_job: float
    commands_per_job: float
    redis_enqueue_us_per_job: float = 0.0  # Redis server CPU (INFO cpu, user + sys) while the jobs were enqueued
    redis_worker_us_per_job: float = 0.0  # ... and while the worker drained them

    @property
    def redis_us_per_job(self) -> float:
        """Redis server CPU for one job's whole life (enqueue, take, finish, result)."""
        return self.redis_enqueue_us_per_job + self.redis_worker_us_per_job


def worker_args(kind: str, url: str, model: str, batch: int, device: str, extra: list[str] | None = None) -> list[str]:
    """The module and arguments of ``ours`` (the batch worker) or ``rq`` (a plain SimpleWorker)."""
    if kind == "ours":
        return [
            "worker",
            "--model",
            model,
            "--redis-url",
            url,
            "--batch-size",
            str(batch),
            "--device",
            device,
            "--max-wait-ms",
            "5",
            "--burst",
            "--log-level",
            "WARNING",
            *(extra or []),
        ]
    return [
        "rq.cli",
        "worker",
        "--burst",
        "--quiet",
        "-w",
        "rq.SimpleWorker",
        "-S",
        SERIALIZER,
        "--url",
        url,
        "classify",
    ]


def redis_cpu_s(conn: redis.Redis) -> float:
    """CPU seconds the Redis server has used (INFO cpu: used_cpu_user + used_cpu_sys, main thread and all)."""
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def ended_times(conn: redis.Redis, ids: list[str]) -> tuple[list[datetime], int]:
    """The end time of each job that finished ok (a failed job is no throughput), and how many did."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(rqkeys.job(job_id), "ended_at", "status")
        rows = pipe.execute()
    ended = [datetime.fromisoformat(e.decode().replace("Z", "+00:00")) for e, s in rows if e and s == b"finished"]
    return ended, len(ended)


def rate_from_end_times(ended: list[datetime]) -> float:
    """Jobs per second after the first completion: excludes start-up (model load, first-batch warm-up)."""
    ended = sorted(ended)
    if len(ended) < 2:
        return float("nan")
    first, last = ended[0], ended[-1]
    after = sum(1 for e in ended if e > first)
    span = (last - first).total_seconds()
    return after / span if span > 0 else float("nan")


def drain(
    kind: str,
    url: str,
    model: str,
    payloads: list[bytes],
    *,
    batch: int = 8,
    device: str = "cpu",
    timeout_s: float = 600,
    extra: list[str] | None = None,
    root: Path = ROOT,
) -> Drain:
    """Fill the queue with ``payloads`` (one job each), run a burst worker to empty it, measure. ``root`` is the
    source tree the worker runs from (another commit's worktree for a before/after comparison, bench/ab.py)."""
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    cpu_start = redis_cpu_s(conn)
    ids = Producer(url).enqueue_many(payloads)
    OUT.mkdir(parents=True, exist_ok=True)
    counts = OUT / f"round-trips-{kind}.json"
    cpu_enqueued = redis_cpu_s(conn)
    before = commands_total(conn)  # after INFO cpu: that call is not counted as the worker's
    path = pythonpath() if root == ROOT else os.pathsep.join([str(root), *pythonpath().split(os.pathsep)[1:]])
    env = {**os.environ, "WORKER_MODEL": model, "WORKER_DEVICE": device, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "bench.counted", str(counts), *worker_args(kind, url, model, batch, device, extra)]
    subprocess.run(cmd, cwd=root, env=env, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL)
    commands, cpu_end = commands_total(conn) - before - 1, redis_cpu_s(conn)
    ended, ok = ended_times(conn, ids)
    round_trips = json.loads(counts.read_text())["round_trips"]
    n = len(ids)
    return Drain(
        kind,
        n,
        ok,
        rate_from_end_times(ended),
        round_trips / n,
        commands / n,
        (cpu_enqueued - cpu_start) * 1e6 / n,
        (cpu_end - cpu_enqueued) * 1e6 / n,
    )
