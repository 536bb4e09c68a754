"""Part of the worker's Redis cost that is the TAKE script returning each job's whole hash, image included.

``python -m bench.take_cost [--jobs-scale 1.0] [--batch 64] [--rounds 3] [--write]``

A prototype, in this bench only (worker/ is unchanged): the queue is filled with ``Producer``, then
emptied by the worker's own store (``RedisStore._start``, ``--batch`` jobs per call) running:

- ``today``: TAKE as shipped (``HGETALL`` of each job, ``data`` and all, inside the script);
- ``hmget + hget``: a copy of TAKE that returns only the fields the store reads besides ``data``
  (one HMGET), then the images in one pipelined round trip of ``HGET data`` per job;
- ``hgetall outside``: a copy that returns no fields, then one pipelined ``HGETALL`` per job;
- ``no data``: the HMGET copy without the HGETs: what a job that carries a reference would cost.

Per job: Redis CPU (``INFO cpu`` deltas) and the server time inside EVALSHA (``commandstats``), and
per TAKE call, the time the script holds the server (no other client is served meanwhile).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from dataclasses import dataclass

import redis

from producer import Producer
from worker.store.lua_jobs import TAKE
from worker.store.rq import RedisStore

from .common import report, table
from .devserver import RedisServer
from .drain import redis_cpu_s
from .payloads import jpeg_of_size
from .redis_ceiling import enqueue_images

WHOLE_HASH = "    out[#out + 1] = redis.call('HGETALL', job_key)\n"
# the fields the store reads besides data (RedisStore._record)
SMALL_FIELDS = """    local flat, names = {}, {'enqueued_at', 'lost_deliveries', 'retries_left', 'result_ttl',
                             'failure_ttl'}
    local values = redis.call('HMGET', job_key, unpack(names))
    for j, f in ipairs(names) do if values[j] then flat[#flat + 1] = f; flat[#flat + 1] = values[j] end end
    out[#out + 1] = flat
"""
NOTHING = "    out[#out + 1] = {}\n"
SCRIPTS = {"today": WHOLE_HASH, "hmget + hget": SMALL_FIELDS, "hgetall outside": NOTHING, "no data": SMALL_FIELDS}
OUTSIDE = {"hmget + hget": ("hget", "data"), "hgetall outside": ("hgetall",)}  # the pipelined call per job
VARIANTS = tuple(SCRIPTS)


@dataclass
class TakeCost:
    """One variant on one payload, per job (script figures per call)."""

    redis_us: float
    script_us: float  # server time inside EVALSHA, per job
    script_ms_per_call: float  # how long one TAKE of a full batch holds the server


def take_all(url: str, payload: bytes, jobs: int, batch: int, variant: str) -> TakeCost:
    """Fill the queue with ``jobs`` copies of ``payload``, then take them all with ``variant``."""
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    enqueue_images(Producer(url), payload, jobs, batch)
    store = RedisStore(conn, "classify", "bench:take")
    store.scripts.load()
    if variant != "today":  # the prototype: a copy of TAKE, loaded under the store's name for it
        assert WHOLE_HASH in TAKE, "TAKE changed: update the prototype"
        source = TAKE.replace(WHOLE_HASH, SCRIPTS[variant])
        store.scripts.sha["take"] = conn.script_load(store.scripts.flags + source)
    conn.config_resetstat()
    cpu_start, taken = redis_cpu_s(conn), 0
    while taken < jobs:
        records = store._start([], batch)
        taken += len(records)
        if variant in OUTSIDE:
            command, *args = OUTSIDE[variant]
            with conn.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.execute_command(command.upper(), f"rq:job:{record.job_id}", *args)
                replies = pipe.execute()
            assert all(len(reply) > 0 for reply in replies)
    redis_us = (redis_cpu_s(conn) - cpu_start) * 1e6 / jobs
    script_us = float(conn.info("commandstats")["cmdstat_evalsha"]["usec"]) / jobs
    return TakeCost(redis_us, script_us, script_us * batch / 1e3)


def run(url: str, args: argparse.Namespace) -> dict[tuple[str, str], TakeCost]:
    """Every (payload, variant), rounds interleaved; the median of each figure."""
    payloads = {f"{kb} KB": (jpeg_of_size(kb * 1024), max(args.batch, int(n * args.jobs_scale)))
                for kb, n in ((1, 3000), (120, 1000), (500, 320))}  # fmt: skip
    runs: dict[tuple[str, str], list[TakeCost]] = {}
    for _ in range(args.rounds):
        for name, (payload, jobs) in payloads.items():
            for variant in VARIANTS:
                runs.setdefault((name, variant), []).append(take_all(url, payload, jobs, args.batch, variant))
    fields = ("redis_us", "script_us", "script_ms_per_call")
    return {k: TakeCost(*(statistics.median(getattr(c, f) for c in v) for f in fields)) for k, v in runs.items()}


def render(cells: dict[tuple[str, str], TakeCost], batch: int) -> str:
    """One row per payload and variant: Redis CPU, the part inside the script, and the server held per TAKE."""
    rows = []
    for (name, variant), cost in cells.items():
        today = cells[(name, "today")].redis_us
        rows.append([name, variant, cost.redis_us, f"{today - cost.redis_us:+.0f}" if variant != "today" else "",
                     cost.script_us, cost.script_ms_per_call])  # fmt: skip
    headers = ["payload", "TAKE variant", "Redis µs/job", "saved vs today µs/job", "in-script µs/job",
               f"ms the script holds Redis per TAKE of {batch}"]  # fmt: skip
    notes = (
        "The store's own TAKE, and prototype copies loaded by this bench only (worker/ unchanged). Redis µs "
        "is server CPU (`INFO cpu`), including the pipelined calls outside the script; in-script µs is "
        "`commandstats` time inside EVALSHA, wall time on a shared 2-core box (it can exceed the CPU figure)."
    )
    return table(headers, rows) + "\n\n" + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-scale", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("worker.store.rq").setLevel(logging.ERROR)  # the copy returns no data: the store says so
    with RedisServer() as server:
        cells = run(server.url, args)
    report("take-cost-cpu", "Worker side: the TAKE script with and without the image", render(cells, args.batch),
           args.write)  # fmt: skip


if __name__ == "__main__":
    main()
