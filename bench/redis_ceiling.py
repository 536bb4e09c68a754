"""What one Redis costs per job: server CPU, commands and memory, enqueue side and worker side, by payload.

``python -m bench.redis_ceiling [--jobs-scale 1.0] [--batch 64] [--write]``

For each payload (1, 35, 120 and 500 KB JPEGs, and jobs that carry a URL instead of bytes), one
throwaway Redis is flushed, ``Producer.enqueue_many`` fills the queue (``--batch`` per call), then
one real ``python -m worker --burst`` (the tiny model, ``--batch-size --batch``) drains it. Redis CPU
is ``INFO cpu`` (used_cpu_user + used_cpu_sys) deltas, commands are ``INFO commandstats`` deltas
(a script counts once, plus each command it runs), memory is ``INFO memory`` used_memory while the
jobs are queued and after the drain (the producer's default result TTL keeps finished jobs).
URL jobs are failed by the worker (no ``--fetch-allow``: ``forbidden_url``), so their worker side is
the fail path; the ``69-byte image`` row is the reference proxy that the worker classifies (ok path).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import redis

from producer import Producer

from .common import ROOT, ensure_model, pythonpath, report, table
from .devserver import RedisServer
from .drain import ended_times, redis_cpu_s, worker_args
from .payloads import jpeg_of_size, reference_url

OURS = {"info", "flushdb"}  # the bench's own calls, not the job's


@dataclass
class Snapshot:
    """What the server has used so far."""

    cpu_s: float
    calls: Counter
    used_memory: int


@dataclass
class Side:
    """Redis's cost per job for one side (enqueue or worker)."""

    cpu_us: float
    commands: float
    top: str  # the commands that make most of it, per job


@dataclass
class Ceiling:
    """One payload's row."""

    payload: str
    jobs: int
    ok: int
    enqueue: Side
    worker: Side
    queued_bytes: float  # used_memory per job while queued
    finished_bytes: float  # ... and after the drain

    @property
    def cpu_us(self) -> float:
        """Redis CPU for one job's whole life."""
        return self.enqueue.cpu_us + self.worker.cpu_us


def snapshot(conn: redis.Redis) -> Snapshot:
    """CPU, per-command calls and memory now (the INFO calls are left out of the counts)."""
    cpu = redis_cpu_s(conn)
    stats = conn.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
    return Snapshot(cpu, calls, int(conn.info("memory")["used_memory"]))


def side(before: Snapshot, after: Snapshot, jobs: int) -> Side:
    """Per-job CPU and commands between two snapshots."""
    calls = after.calls - before.calls
    for name in OURS:
        calls.pop(name, None)
    top = ", ".join(f"{name} {n / jobs:.2g}" for name, n in calls.most_common(12) if n / jobs >= 0.05)
    return Side((after.cpu_s - before.cpu_s) * 1e6 / jobs, sum(calls.values()) / jobs, top)


def enqueue_images(producer: Producer, payload: bytes, jobs: int, batch: int) -> list[str]:
    """``jobs`` copies of ``payload``, ``batch`` per ``enqueue_many`` call."""
    ids: list[str] = []
    for start in range(0, jobs, batch):
        ids += producer.enqueue_many([payload] * min(batch, jobs - start))
    return ids


def enqueue_refs(producer: Producer, jobs: int, batch: int) -> list[str]:
    """Jobs that carry ``image_url`` instead of ``image`` (the producer writes them as RQ does)."""
    ids: list[str] = []
    for start in range(0, jobs, batch):
        ids += producer.enqueue_many(image_urls=[reference_url(n) for n in range(start, min(jobs, start + batch))])
    return ids


def drain_with_worker(url: str, model: str, batch: int, timeout_s: float) -> None:
    """One ``python -m worker --burst`` until the queue is empty."""
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    args = worker_args("ours", url, model, batch, "cpu", ["--log-level", "ERROR"])  # URL jobs fail: no log per job
    subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL
    )


def measure(url: str, model: str, name: str, enqueue: Callable[[Producer], list[str]], batch: int) -> Ceiling:
    """Flush, enqueue, drain; the three snapshots make the row (the first call also loads the worker's scripts:
    run a warm-up first)."""
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    start = snapshot(conn)
    ids = enqueue(Producer(url))
    queued = snapshot(conn)
    drain_with_worker(url, model, batch, timeout_s=900)
    done = snapshot(conn)
    _, ok = ended_times(conn, ids)
    n, base = len(ids), start.used_memory
    return Ceiling(
        name,
        n,
        ok,
        side(start, queued, n),
        side(queued, done, n),
        (queued.used_memory - base) / n,
        (done.used_memory - base) / n,
    )


def cases(scale: float, batch: int) -> dict[str, tuple[int, Callable[[Producer], list[str]]]]:
    """Each row's job count and how its jobs are enqueued (counts keep the queued bytes near 250 MB at most)."""
    out: dict[str, tuple[int, Callable[[Producer], list[str]]]] = {}
    for kb, jobs in ((1, 3000), (35, 2000), (120, 1500), (500, 500)):
        payload, n = jpeg_of_size(kb * 1024), max(batch, int(jobs * scale))
        out[f"{kb} KB"] = (n, lambda p, payload=payload, n=n: enqueue_images(p, payload, n, batch))
    tiny, n = (ROOT / "examples" / "images" / "odd_1x1.png").read_bytes(), max(batch, int(3000 * scale))
    out[f"{len(tiny)}-byte image (reference proxy)"] = (n, lambda p: enqueue_images(p, tiny, n, batch))
    out["URL reference (fails: fetch not allowed)"] = (n, lambda p: enqueue_refs(p, n, batch))
    return out


def render(rows: list[Ceiling]) -> tuple[str, str]:
    """The per-job table and the commands table."""
    headers = [
        "payload",
        "jobs",
        "ok",
        "enqueue: Redis µs/job",
        "worker: Redis µs/job",
        "Redis µs/job",
        "jobs/s per Redis core",
        "enqueue: cmds/job",
        "worker: cmds/job",
        "KB per queued job",
        "KB per finished job",
    ]
    main_rows = [
        [
            r.payload,
            r.jobs,
            r.ok,
            r.enqueue.cpu_us,
            r.worker.cpu_us,
            r.cpu_us,
            f"{1e6 / r.cpu_us:,.0f}",
            r.enqueue.commands,
            r.worker.commands,
            r.queued_bytes / 1024,
            r.finished_bytes / 1024,
        ]
        for r in rows
    ]
    commands = table(
        ["payload", "enqueue: commands per job", "worker: commands per job"],
        [[r.payload, r.enqueue.top, r.worker.top] for r in rows],
    )
    return table(headers, main_rows), commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-scale", type=float, default=1.0, help="multiply every row's job count")
    parser.add_argument("--batch", type=int, default=64, help="jobs per enqueue_many call and the worker's batch size")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    model = str(ensure_model("tiny"))
    rows = []
    with RedisServer() as server:
        measure(server.url, model, "warm-up", lambda p: enqueue_images(p, b"x", args.batch, args.batch), args.batch)
        for name, (_, enqueue) in cases(args.jobs_scale, args.batch).items():
            rows.append(measure(server.url, model, name, enqueue, args.batch))
            print(f"{name}: {rows[-1].cpu_us:.0f} µs/job", flush=True)
    per_job, commands = render(rows)
    notes = (
        f"Tiny model, our worker `--batch-size {args.batch}`, `enqueue_many` of {args.batch}; "
        "Redis 7 on the same 2-core box. Sizing rule: docs/scaling.md."
    )
    report("redis-ceiling-cpu", "What one Redis costs per job", f"{per_job}\n\n{commands}\n\n{notes}", args.write)


if __name__ == "__main__":
    main()
