"""``producer status`` only reads: it never runs RQ's clean-up on a live worker's started jobs."""

from __future__ import annotations

from producer import Producer
from producer.status import gather
from worker.store.rq import RedisStore

from ..conftest import image_bytes


def test_status_counts_without_failing_started_jobs_whose_score_has_passed(redis_url, conn):
    store = RedisStore(conn, "classify", "behind:cpu:1")
    store.register()
    (job_id,) = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")])
    (job,) = store.take(1, 1.0)
    # the worker's clock was 7 minutes behind: its started-registry score is already in the past
    conn.zadd("rq:wip:classify", {job.execution: 1.0})
    status = gather(conn, "classify")
    assert status["started"] == 1 and status["failed"] == 0
    assert conn.hget(f"rq:job:{job_id}", "status") == b"started"
    assert conn.zscore("rq:wip:classify", job.execution) == 1.0 and conn.zcard("rq:failed:classify") == 0
