"""Sharding: Redis CPU per job per shard, and load balance, with 1, 2 and 3 shards; and the idle round trip.

``python -m bench.shards [--jobs 3000] [--write]``. For each shard count, N redis-servers (on this one
machine) are filled through a sharded ``Producer`` and drained by one worker serving them all (tiny
model, 35 KB photos); each server's CPU (INFO cpu) is read before and after. Then ``classify()`` one
at a time, idle, against 1 shard and 3 shards. On the 2-core box the worker, the producer and every
Redis share two cores: the CPU per job is what to compare, not the rates.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import redis

from bench.devserver import RedisServer
from producer import Producer

from .common import ROOT, ensure_model, percentile, photos, pythonpath, report, table
from .drain import redis_cpu_s


def worker(urls: list[str], model: str, burst: bool) -> subprocess.Popen:
    flags = [arg for url in urls for arg in ("--redis-url", url)]
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        model,
        *flags,
        "--batch-size",
        "32",
        "--max-wait-ms",
        "5",
        "--log-level",
        "WARNING",
        "--idle-wait-ms",
        "1000",
        *(["--burst"] if burst else []),
    ]
    return subprocess.Popen(args, cwd=ROOT, env={"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"})


def drain(n: int, jobs: int, model: str, payload: bytes) -> dict:
    servers = [RedisServer().start() for _ in range(n)]
    try:
        urls = [s.url for s in servers]
        conns = [redis.Redis.from_url(u) for u in urls]
        producer = Producer(",".join(urls))
        before = [redis_cpu_s(c) for c in conns]
        ids = []
        for i in range(0, jobs, 200):
            ids += producer.enqueue_many([payload] * min(200, jobs - i))
        per_shard = [c.llen("rq:queue:classify") for c in conns]
        start = time.monotonic()
        proc = worker(urls, model, burst=True)
        proc.wait(timeout=600)
        elapsed = time.monotonic() - start
        cpu = [(redis_cpu_s(c) - b) * 1e6 for c, b in zip(conns, before, strict=False)]
        finished = sum(c.zcard("rq:finished:classify") for c in conns)
        return {
            "shards": n,
            "jobs": finished,
            "per_shard": per_shard,
            "elapsed_s": elapsed,
            "us_per_job": [c / max(1, j) for c, j in zip(cpu, per_shard, strict=False)],
        }
    finally:
        for server in servers:
            server.stop()


def idle_round_trip(n: int, model: str, payload: bytes, rounds: int) -> float:
    servers = [RedisServer().start() for _ in range(n)]
    proc = None
    try:
        urls = [s.url for s in servers]
        producer = Producer(",".join(urls))
        proc = worker(urls, model, burst=False)
        producer.classify(payload, timeout=120)  # warm: the worker is up and listening
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            producer.classify(payload, timeout=60)
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)  # idle between requests: every take blocks first
        return percentile(times, 50)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    model, payload = str(ensure_model("tiny")), photos()[1]
    runs = [drain(n, args.jobs, model, payload) for n in (1, 2, 3)]
    base = statistics.mean(runs[0]["us_per_job"])
    rows = []
    for r in runs:
        mean_load = statistics.mean(r["per_shard"])
        spread = max(abs(j - mean_load) / mean_load for j in r["per_shard"])
        us = r["us_per_job"]
        rows.append(
            [
                r["shards"],
                r["jobs"],
                " / ".join(str(j) for j in r["per_shard"]),
                f"{spread:.1%}",
                " / ".join(f"{u:.0f}" for u in us),
                f"{max(abs(u - base) / base for u in us):.1%}",
                round(r["jobs"] / r["elapsed_s"], 1),
            ]
        )
    rt = {n: idle_round_trip(n, model, payload, args.rounds) for n in (1, 3)}
    body = table(
        [
            "shards",
            "jobs done",
            "jobs per shard",
            "load vs mean (max)",
            "Redis CPU µs/job per shard",
            "vs 1 shard (max)",
            "images/s",
        ],
        rows,
    )
    body += (
        f"\n\nIdle `classify()` round trip, p50 of {args.rounds}: 1 shard {rt[1]:.1f} ms, "
        f"3 shards {rt[3]:.1f} ms ({rt[3] / rt[1]:.2f}x).\n\nPayload {len(payload) // 1024} KB photo, tiny "
        "model, one worker serving every shard, all on this machine."
    )
    report("shards-cpu", "Sharding: Redis CPU per job per shard, balance, idle round trip", body, args.write)


if __name__ == "__main__":
    main()
