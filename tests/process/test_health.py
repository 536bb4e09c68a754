"""The watchdog and the probes on real worker processes: a wedged pipeline exits and its jobs are
answered by another worker; /readyz follows Redis; /healthz stays up while Redis is away."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import redis

from bench.devserver import RedisServer, free_port
from producer import Producer

from ..conftest import ROOT, image_bytes, wait_for, wait_for_workers
from .test_reliability import _stop, assert_all_finished_once

MARKER = b"WEDGE-THIS-DECODE"


def probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_a_wedged_pipeline_exits_3_and_its_jobs_are_answered_elsewhere(redis_url, conn, tiny_model_path, tmp_path):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "tests.stalling_worker",
        MARKER.decode(),
        "--model",
        str(tiny_model_path),
        "--redis-url",
        redis_url,
        "--stall-timeout-s",
        "3",
        "--worker-ttl-s",
        "2",
        "--health-port",
        str(port),
        "--batch-size",
        "4",
        "--idle-wait-ms",
        "200",
    ]
    wedged = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ))
    other = None
    try:
        wait_for_workers(conn)
        producer = Producer(redis_url)
        ids = producer.enqueue_many([image_bytes("cat.jpg") + MARKER] + [image_bytes("coffee.jpg")] * 5)
        wait_for(lambda: probe(port, "/healthz") == 503 or wedged.poll() is not None, 60)
        assert wedged.wait(timeout=60) == 3
        other = _worker(redis_url, tiny_model_path)  # a healthy worker: the reaper gives it the jobs
        for job_id in ids:
            assert producer.result(job_id, timeout=60)["ok"]
        assert_all_finished_once(conn, ids)
    finally:
        _stop(wedged)
        _stop(other)


def test_readyz_follows_redis_and_healthz_stays_up(tiny_model_path):
    server = RedisServer().start()
    port = free_port()
    proc = _worker(server.url, tiny_model_path, "--health-port", str(port))
    try:
        assert wait_for(lambda: probe(port, "/readyz") == 200, 60)
        server.process.terminate()
        server.process.wait()
        assert wait_for(lambda: probe(port, "/readyz") == 503, 30)  # within the TTL (2 s) and a beat
        assert probe(port, "/healthz") == 200  # waiting on Redis is not a stall
        server.start()
        assert wait_for(lambda: probe(port, "/readyz") == 200, 60)
        assert Producer(server.url).classify(image_bytes("cat.jpg"), timeout=60)["ok"]
        assert redis.Redis.from_url(server.url).ping()
    finally:
        _stop(proc)
        server.stop()


def _worker(url: str, model: object, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(model),
        "--redis-url",
        url,
        "--worker-ttl-s",
        "2",
        "--idle-wait-ms",
        "200",
        *extra,
    ]
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ))
