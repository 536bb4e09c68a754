"""The producer's enqueue before and after, in one run: another commit's producer against this checkout's.

``python -m bench.enqueue_ab --before REF [--jobs 2000] [--rounds 5] [--write]``

The commit ``REF`` is checked out in a git worktree (``bench.ab.worktree``); each round runs both producers, in
turn, as child processes against one throwaway Redis, each enqueuing ``--jobs`` distinct 48-px JPEGs three ways:
``Producer.enqueue`` one by one, ``enqueue_many`` in calls of 64, and ``AsyncProducer.enqueue`` one by one. Per
job: the producer process's CPU (µs), the median over rounds; and the ratio after/before of each round. Judges a
change on the producer's per-job path without the machine's noise between separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .ab import worktree
from .common import ROOT, report, table
from .devserver import RedisServer

WAYS = ("enqueue", "enqueue_many/64", "async enqueue")
CHILD = r"""
import asyncio, json, sys, time
import redis
from bench.common import small_jpegs
from producer import Producer
from producer.aio import AsyncProducer
url, jobs = sys.argv[1], int(sys.argv[2])
images = [bytes(img) + bytes([n % 256, n // 256]) for n, img in enumerate(small_jpegs(8) * (jobs // 8 + 1))][:jobs]
conn, out = redis.Redis.from_url(url), {}
def timed(name, work):
    conn.flushall()
    began = time.process_time()
    work()
    out[name] = (time.process_time() - began) / jobs * 1e6
p = Producer(url)
timed("enqueue", lambda: [p.enqueue(i) for i in images])
timed("enqueue_many/64", lambda: [p.enqueue_many(images[k:k + 64]) for k in range(0, jobs, 64)])
async def one_by_one():
    a = AsyncProducer(url)
    for i in images:
        await a.enqueue(i)
    await a.close()
timed("async enqueue", lambda: asyncio.run(one_by_one()))
print(json.dumps(out))
"""


def child(tree: Path, url: str, jobs: int) -> dict[str, float]:
    """One producer's CPU per job, each way (a child process run from ``tree``)."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}  # the commit's producer, this checkout's bench
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, str(jobs)], env=env, cwd=tree, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with (a git ref)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    before, sha = worktree(args.before)
    server = RedisServer().start()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    try:
        for _ in range(args.rounds):
            runs["before"].append(child(before, server.url, args.jobs))
            runs["after"].append(child(ROOT, server.url, args.jobs))
    finally:
        server.stop()
    rows = []
    for way in WAYS:
        old = [r[way] for r in runs["before"]]
        new = [r[way] for r in runs["after"]]
        ratios = ", ".join(f"{n / o:.2f}" for o, n in zip(old, new, strict=True))
        rows.append(
            [
                way,
                f"{statistics.median(old):.1f}",
                f"{statistics.median(new):.1f}",
                f"{statistics.median(new) / statistics.median(old):.2f}",
                ratios,
            ]
        )
    body = table(["way", f"CPU µs/job {sha}", "CPU µs/job this checkout", "after / before", "each round"], rows)
    body += f"\n\n- {args.jobs} distinct 48-px JPEGs per way and round, {args.rounds} alternating rounds, one Redis."
    report("enqueue-ab", f"Producer enqueue, {sha} against this checkout", body, args.write)


if __name__ == "__main__":
    main()
