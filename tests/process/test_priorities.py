"""Priorities: ``--queue high,default`` serves high first, and default once high is empty (not starved);
results go to each queue's own channel and feed; one registration lists both queues."""

from __future__ import annotations

import redis
from rq import Worker

from producer import Producer

from ..conftest import image_bytes, wait_for, wait_for_workers


def ended(conn: redis.Redis, job_ids: list[str]) -> list[float]:
    from rq.job import Job

    from producer.wire.serializer import MsgpackSerializer

    return [Job.fetch(i, connection=conn, serializer=MsgpackSerializer).ended_at.timestamp() for i in job_ids]


def test_high_drains_first_and_default_is_not_starved(redis_url, conn, start_worker):
    high, default = Producer(redis_url, queue="high"), Producer(redis_url, queue="default")
    low_ids = default.enqueue_many([image_bytes("cat.jpg")] * 40)
    high_ids = high.enqueue_many([image_bytes("coffee.jpg")] * 40)
    start_worker("--queue", "high,default", "--batch-size", "8")
    for job_id in high_ids:
        assert high.result(job_id, timeout=90)["ok"]
    for job_id in low_ids:  # once high is empty
        assert default.result(job_id, timeout=90)["ok"]
    assert max(ended(conn, high_ids)) <= min(ended(conn, low_ids)) + 0.5  # high first (a batch may overlap)
    assert sum(e < max(ended(conn, high_ids)) for e in ended(conn, low_ids)) <= 8  # at most one mixed batch
    (worker,) = Worker.all(connection=conn)
    assert set(worker.queue_names()) == {"high", "default"}
    assert conn.xlen("high:results:stream") == 40 and conn.xlen("default:results:stream") == 40


def test_an_idle_worker_wakes_for_either_queue(redis_url, conn, start_worker):
    start_worker("--queue", "high,default", "--idle-wait-ms", "2000")
    wait_for_workers(conn)
    for queue in ("default", "high", "default"):
        assert Producer(redis_url, queue=queue).classify(image_bytes("cat.jpg"), timeout=10)["ok"]
    assert wait_for(lambda: conn.zcard("rq:finished:default") == 2 and conn.zcard("rq:finished:high") == 1, 10)


def test_the_producer_cli_never_reads_the_workers_queue_list(redis_url, conn):
    import os
    import subprocess
    import sys

    from ..conftest import ROOT, all_images

    env = {**os.environ, "WORKER_QUEUE": "high,default", "PRODUCER_QUEUE": "high", "REDIS_URL": redis_url}
    subprocess.run(
        [sys.executable, "-m", "producer", "push", str(all_images()[0])],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert conn.llen("rq:queue:high") == 1 and not conn.exists("rq:queue:high,default")
