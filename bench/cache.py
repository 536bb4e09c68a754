"""The result cache with 30% repeated photos: work done (jobs queued) and images/s, cache on vs off, one run.

``python -m bench.cache [--jobs 1000] [--write]``. A worker (tiny model) and a producer on one Redis.
Warm-up: the distinct photos of an earlier day are classified once. Then the measured stream: 70% new
photos, 30% repeats of earlier ones, sent with ``enqueue(..., cache=True)`` (cache on) or plainly with
``--cache-ttl-s 0`` (off); every answer is waited for.
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import time

from PIL import Image

from bench.devserver import RedisServer
from producer import Producer

from .common import ROOT, ensure_model, pythonpath, report, table


def photos(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        img = Image.effect_noise((96, 96), rng.uniform(20, 90)).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def run(cache: bool, jobs: int, model: str) -> dict:
    server = RedisServer().start()
    proc = None
    try:
        args = [
            sys.executable,
            "-m",
            "worker",
            "--model",
            model,
            "--redis-url",
            server.url,
            "--batch-size",
            "32",
            "--log-level",
            "WARNING",
            "--cache-ttl-s",
            "3600" if cache else "0",
        ]
        proc = subprocess.Popen(args, cwd=ROOT, env={"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"})
        producer = Producer(server.url)
        earlier = photos(int(jobs * 0.3), seed=1)
        for job_id in producer.enqueue_many(earlier, cache=True):  # yesterday's ads, classified (and cached) once
            producer.result(job_id, timeout=300)
        rng = random.Random(7)
        stream = photos(jobs - len(earlier), seed=2) + earlier
        rng.shuffle(stream)
        before = server_finished(producer)
        start = time.perf_counter()
        ids = [producer.enqueue(p, cache=cache) for p in stream]
        for job_id in ids:
            producer.result(job_id, timeout=300)
        elapsed = time.perf_counter() - start
        return {
            "cache": cache,
            "jobs": len(stream),
            "queued": server_finished(producer) - before,
            "hits": producer.cache.hits,
            "images_per_s": len(stream) / elapsed,
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        server.stop()


def server_finished(producer: Producer) -> int:
    return producer.connection.zcard("rq:finished:classify")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--model", choices=["tiny", "lite0"], default="tiny")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    model = str(ensure_model(args.model))
    off, on = run(False, args.jobs, model), run(True, args.jobs, model)
    rows = [["off", r["jobs"], r["queued"], r["hits"], round(r["images_per_s"], 1)] for r in (off,)]
    rows += [["on", on["jobs"], on["queued"], on["hits"], round(on["images_per_s"], 1)]]
    body = table(["cache", "answers", "jobs run by a worker", "cache hits", "answers/s"], rows)
    body += (
        f"\n\nWith 30% repeats the cache ran {on['queued'] / max(1, off['queued']):.2f}x the jobs and answered "
        f"at {on['images_per_s'] / off['images_per_s']:.2f}x the rate (one producer thread, {args.model} model, "
        "96 px noise JPEGs, 2-core box). A lookup costs two reads (the workers' announcement, then the "
        "entry): it pays when a forward pass costs more than those round trips."
    )
    report(f"cache-{args.model}-cpu", f"Result cache ({args.model}): 30% repeated photos, on vs off", body, args.write)


if __name__ == "__main__":
    main()
