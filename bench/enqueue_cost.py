"""What one enqueue costs the producer: RQ's zlib-compressed job data (before) vs stored plain (after).

``python -m bench.enqueue_cost [--jobs 1024] [--batch 64] [--rounds 3] [--write]``

Both producers run against one throwaway Redis in the same run, interleaved round by round; each
cell is the median of its rounds. ``one`` is ``Producer.enqueue`` per job, ``many`` is
``Producer.enqueue_many`` of ``--batch`` jobs. Reported per job: wall time (what the caller waits,
including Redis's share on this box), the producer's own CPU, and the Redis server's CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from producer import JobOptions, Producer

from .common import ROOT, report, table
from .devserver import RedisServer
from .drain import redis_cpu_s
from .payloads import jpeg_of_size

PHOTO_119KB = ROOT / "examples" / "images" / "motorcycle.jpg"  # the "119 KB photo"


@dataclass
class Cost:
    """Per-job costs of one cell, in milliseconds (Redis in microseconds)."""

    wall_ms: float
    cpu_ms: float
    redis_us: float


def measure(conn: redis.Redis, enqueue: Callable[[], int]) -> Cost:
    """Run ``enqueue`` (returns how many jobs it enqueued) and time it per job; the db is flushed after."""
    redis_start, cpu_start, start = redis_cpu_s(conn), time.process_time(), time.perf_counter()
    jobs = enqueue()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    redis_s = redis_cpu_s(conn) - redis_start
    conn.flushdb()
    return Cost(wall * 1e3 / jobs, cpu * 1e3 / jobs, redis_s * 1e6 / jobs)


def runner(producer: Producer, payload: bytes, mode: str, jobs: int, batch: int) -> Callable[[], int]:
    """A callable that enqueues ``jobs`` copies of ``payload`` one at a time or ``batch`` per call."""

    def one() -> int:
        for _ in range(jobs):
            producer.enqueue(payload)
        return jobs

    def many() -> int:
        for _ in range(jobs // batch):
            producer.enqueue_many([payload] * batch)
        return jobs // batch * batch

    return one if mode == "one" else many


def median_cost(costs: list[Cost]) -> Cost:
    """The median of each field."""
    return Cost(*(statistics.median(getattr(c, f) for c in costs) for f in ("wall_ms", "cpu_ms", "redis_us")))


def run(url: str, args: argparse.Namespace) -> dict[tuple[str, str, str], Cost]:
    """Every (variant, payload, mode) cell, rounds interleaved so that drift hits all alike."""
    conn = redis.Redis.from_url(url)
    producers = {"before": Producer(url, options=JobOptions(compress_data=True)), "after": Producer(url)}
    payloads = {"1 KB": jpeg_of_size(1024), "119 KB photo": PHOTO_119KB.read_bytes()}
    cells: dict[tuple[str, str, str], list[Cost]] = {}
    for _ in range(args.rounds):
        for variant, producer in producers.items():
            for name, payload in payloads.items():
                for mode in ("one", "many"):
                    jobs = args.jobs if variant == "after" else max(args.batch, args.jobs // 4)  # zlib is slow
                    runner(producer, payload, mode, args.batch, args.batch)()  # warm up
                    cost = measure(conn, runner(producer, payload, mode, jobs, args.batch))
                    cells.setdefault((variant, name, mode), []).append(cost)
    return {key: median_cost(costs) for key, costs in cells.items()}


def render(cells: dict[tuple[str, str, str], Cost], batch: int) -> str:
    """The before/after table and the targets."""
    rows = []
    for (variant, name, mode), cost in cells.items():
        if variant != "after":
            continue
        old = cells[("before", name, mode)]
        label = "enqueue (one at a time)" if mode == "one" else f"enqueue_many ({batch} per call)"
        rows.append(
            [
                name,
                label,
                old.wall_ms,
                cost.wall_ms,
                f"{old.wall_ms / cost.wall_ms:.1f}x",
                old.cpu_ms,
                cost.cpu_ms,
                old.redis_us,
                cost.redis_us,
            ]
        )
    headers = [
        "payload",
        "call",
        "before: ms/job",
        "after: ms/job",
        "speed-up",
        "before: producer CPU ms",
        "after: producer CPU ms",
        "before: Redis µs/job",
        "after: Redis µs/job",
    ]
    after = {(n, m): c for (v, n, m), c in cells.items() if v == "after"}
    big, small = after[("119 KB photo", "one")], after[("1 KB", "one")]
    big_many, small_many = after[("119 KB photo", "many")], after[("1 KB", "many")]
    notes = [
        "- before: RQ's zlib-compressed job data (`JobOptions(compress_data=True)`); after: stored plain (the "
        "default). ms/job is wall time: on this shared 2-core box it includes the Redis server's share.",
        f"- Target ≤ 0.5 ms per 119 KB enqueue: {big.wall_ms:.2f} ms one at a time, {big_many.wall_ms:.2f} ms in "
        f"enqueue_many (producer CPU {big.cpu_ms:.2f} / {big_many.cpu_ms:.2f} ms).",
        f"- Target 119 KB ≤ 2x 1 KB: {big.wall_ms / small.wall_ms:.1f}x one at a time, "
        f"{big_many.wall_ms / small_many.wall_ms:.1f}x in enqueue_many.",
        f"- enqueue_many vs one at a time, per job: {small_many.wall_ms / small.wall_ms:.2f}x at 1 KB, "
        f"{big_many.wall_ms / big.wall_ms:.2f}x at 119 KB.",
    ]
    return table(headers, rows) + "\n\n" + "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1024, help="jobs per cell (the zlib baseline runs a quarter)")
    parser.add_argument("--batch", type=int, default=64, help="jobs per enqueue_many call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    with RedisServer() as server:
        cells = run(server.url, args)
    body = render(cells, args.batch)
    report("enqueue-cost-cpu", "Producer: cost per enqueue, zlib data (before) vs plain (after)", body, args.write)


if __name__ == "__main__":
    main()
