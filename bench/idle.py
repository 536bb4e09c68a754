"""One request at a time on an idle worker: the round trip a lone user sees, with Redis at its default ``hz``.

``python -m bench.idle [--requests 200] [--max-wait-ms 5] [--write]``

The tiny model (~1 ms of work) on one photo; ``Producer.classify()`` called back to back, each
waiting for its result. Redis runs with its default ``hz`` 10: a design that relies on short
server-side blocking timeouts shows up here as ~100 ms. Target: p50 <= max_wait + 10 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from bench.devserver import RedisServer, find_redis_server, wait_until
from producer import Producer

from .common import OUT, ROOT, ensure_model, percentile, photos, pythonpath, report, table
from .latency import pipeline_cost


def measure(url: str, requests: int) -> list[float]:
    """Milliseconds per ``classify()`` round trip, one at a time (after 10 warm-up calls)."""
    producer, image = Producer(url), photos()[1]
    for _ in range(10):
        producer.classify(image, timeout=30)
    out = []
    for _ in range(requests):
        start = time.perf_counter()
        producer.classify(image, timeout=30)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    server = RedisServer(binary=find_redis_server(prefer_embedded=False)).start()
    hz = server_hz(server.url)
    cmd = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(ensure_model("tiny")),
        "--redis-url",
        server.url,
        "--batch-size",
        "8",
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--log-level",
        "INFO",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "idle-worker.log"
    worker = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()}, stderr=log.open("wb"))
    try:
        from rq import Worker

        conn = Producer(server.url).connection
        wait_until(lambda: Worker.all(connection=conn), 120, "the worker to register")
        times = measure(server.url, args.requests)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        server.stop()
    p50, p99 = percentile(times, 50), percentile(times, 99)
    bound = args.max_wait_ms + 10
    verdict = "meets" if p50 <= bound else f"misses by {p50 - bound:.1f} ms"
    rows = [[args.requests, hz, args.max_wait_ms, p50, percentile(times, 90), p99, bound]]
    body = table(["requests", "redis hz", "max wait ms", "p50 ms", "p90 ms", "p99 ms", "target p50 <= ms"], rows)
    body += f"\n\nOne `classify()` at a time on an idle worker (tiny model): p50 {p50:.1f} ms: **{verdict}**."
    cost = pipeline_cost(log)
    if cost:
        body += f"\n\nThe pipeline's own cost in this run (worker log, p50 per job): {cost}; target <= 2 ms each."
    report("idle", "One request at a time on an idle worker", body, args.write)


def server_hz(url: str) -> int:
    """The server's ``hz`` (its cron tick: how often blocked clients' timeouts are checked)."""
    import redis

    return int(redis.Redis.from_url(url).config_get("hz")["hz"])


if __name__ == "__main__":
    main()
