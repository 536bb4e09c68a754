"""A Redis restart without persistence while a worker is busy: it is listed again within one TTL.

Everything is gone after such a restart, its registration too. The worker's heartbeat registers it again
when it finds its key gone; a take or a finish that re-created a partial worker hash (a counter, a state)
before that beat used to hide the loss for good: ``producer status`` said 0 workers while it worked on."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time

import redis

from bench.devserver import RedisServer
from producer import Producer
from producer.status import gather

from ..conftest import ROOT, image_bytes, wait_for, wait_for_workers

TTL_S = 30  # beats every 5 s (and after each batch): on the old code a take or a finish came first


def keep_enqueueing(url: str, stop: threading.Event) -> None:
    """A web backend that goes on enqueueing (every 50 ms) through the restart."""
    producer = Producer(url)
    while not stop.is_set():
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            producer.enqueue(image_bytes("cat.jpg"))
        stop.wait(0.05)


def test_a_busy_worker_is_listed_again_within_one_ttl_after_redis_restarts_without_persistence(tiny_model_path):
    server = RedisServer().start()  # --save '' --appendonly no: a restart empties it
    args = [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", server.url]
    args += ["--worker-ttl-s", str(TTL_S), "--idle-wait-ms", "100", "--batch-size", "4"]
    proc = subprocess.Popen(args, cwd=ROOT)
    stop = threading.Event()
    feeder = threading.Thread(target=keep_enqueueing, args=(server.url, stop), daemon=True)
    try:
        conn = redis.Redis.from_url(server.url)
        wait_for_workers(conn)
        feeder.start()
        wait_for(lambda: conn.zcard("rq:finished:classify") >= 5, 60)
        server.restart()  # the worker's takes and finishes run on as soon as it answers again
        answered = time.monotonic()
        conn = redis.Redis.from_url(server.url)
        wait_for(lambda: len(gather(conn, "classify")["workers"]) == 1, TTL_S)
        assert time.monotonic() - answered < TTL_S
        wait_for(lambda: conn.zcard("rq:finished:classify") >= 3, 30)  # and it works on, listed
        (worker,) = gather(conn, "classify")["workers"]
        assert worker["state"] in ("busy", "idle") and worker["last_heartbeat_s_ago"] is not None
        assert proc.poll() is None
    finally:
        stop.set()
        feeder.join(5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        server.stop()
