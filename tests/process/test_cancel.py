"""Cancellation with RQ's semantics, against a real Redis and real workers: a queued job never runs, a
taken-not-started job is skipped by the start script, a running job ends ok: false "canceled" (published
and fed), result() raises JobFailed at once, and RQ's own Job.cancel() does the same. What each cancel
answers says which happened; cancels racing a live worker's takes never end ok
(tests/contract/test_cancel_race.py puts a cancel between each pair of a worker's steps)."""

from __future__ import annotations

import asyncio
import time

import pytest
from rq import Queue
from rq.job import Job

from producer import CancelOutcome, JobFailed, Producer
from producer.aio import AsyncProducer
from producer.errors import JobNotFound
from producer.wire.results import make_result
from producer.wire.serializer import MsgpackSerializer
from worker.store import Outcome
from worker.store.rq import RedisStore

from ..conftest import image_bytes, wait_for_workers


def canceled_registry(conn) -> list[str]:
    return Queue("classify", connection=conn, serializer=MsgpackSerializer).canceled_job_registry.get_job_ids()


def test_a_queued_job_canceled_never_runs_and_result_does_not_hang(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    keep, drop = producer.enqueue_many([image_bytes("cat.jpg")] * 2)
    assert producer.cancel(drop) is CancelOutcome.CANCELED
    assert producer.cancel(drop) is CancelOutcome.ALREADY_CANCELED  # idempotent, and says so
    assert asyncio.run(AsyncProducer(redis_url).cancel(drop)) is CancelOutcome.ALREADY_CANCELED
    started = time.monotonic()
    with pytest.raises(JobFailed) as failed:
        producer.result(drop, timeout=60)
    assert failed.value.error["type"] == "canceled" and time.monotonic() - started < 5  # at once, not after 60 s
    start_worker()
    assert producer.result(keep, timeout=60)["ok"]
    assert conn.hget(Job.key_for(drop), "status") == b"canceled" and canceled_registry(conn) == [drop]
    assert conn.exists(f"rq:results:{drop}") == 0  # it never ran
    with pytest.raises(JobNotFound):
        producer.cancel("no-such-job")


def test_a_job_taken_but_not_started_is_skipped_by_the_start_script(redis_url, conn):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([image_bytes("cat.jpg")])
    conn.lmove("rq:queue:classify", "rq:queue:classify:intermediate", "LEFT", "RIGHT")  # a worker's blocking move
    assert producer.cancel(job_id) is CancelOutcome.CANCELED
    store = RedisStore(conn, "classify", "w1")
    store.register()
    assert store.start_moved([job_id.encode()], 8) == []
    assert conn.zcard("rq:wip:classify") == 0 and conn.hget(Job.key_for(job_id), "status") == b"canceled"
    assert conn.llen("rq:queue:classify:intermediate") == 0


@pytest.mark.parametrize("how", ["ours", "rq"])
def test_a_running_job_canceled_ends_canceled_and_is_announced(redis_url, conn, how):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([image_bytes("cat.jpg")])
    store = RedisStore(conn, "classify", "w1")
    store.register()
    (job,) = store.take(1, 1.0)
    sub = conn.pubsub()
    sub.subscribe("classify:results")
    if how == "ours":
        assert producer.cancel(job_id) is CancelOutcome.CANCELING
    else:
        Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).cancel()
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    assert store.finish([Outcome(job, result)]) == []  # not skipped silently
    with pytest.raises(JobFailed) as failed:
        producer.result(job_id, timeout=10)
    assert failed.value.error["type"] == "canceled"
    feed = conn.xrange("classify:results:stream")
    assert [f[b"job_id"] for _, f in feed] == [job_id.encode()]
    assert conn.hget(Job.key_for(job_id), "status") == b"canceled" and canceled_registry(conn) == [job_id]
    assert conn.scard("rq:worker:w1:executions") == 0


def test_a_worker_answers_a_job_canceled_mid_batch_as_canceled(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    start_worker("--batch-size", "8")
    wait_for_workers(conn)
    ids = producer.enqueue_many([image_bytes("coffee.jpg")] * 200)
    victim = ids[-1]
    producer.cancel(victim)
    for job_id in ids[:-1]:
        assert producer.result(job_id, timeout=90)["ok"]
    with pytest.raises(JobFailed) as failed:
        producer.result(victim, timeout=10)
    assert failed.value.error["type"] == "canceled"


def test_cancels_racing_a_live_workers_takes_never_end_ok_and_never_raise(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    start_worker("--batch-size", "4", "--max-wait-ms", "0")
    wait_for_workers(conn)
    outcomes = {}
    for _ in range(150):  # enqueue, then cancel at once: the worker takes some first
        job_id = producer.enqueue(image_bytes("cat.jpg"))
        outcomes[job_id] = producer.cancel(job_id)
    assert CancelOutcome.ALREADY_CANCELED not in outcomes.values()  # each was canceled once
    for job_id, outcome in outcomes.items():
        if outcome is CancelOutcome.ALREADY_FINAL:  # it finished before the cancel came: left as it was
            assert producer.result(job_id, timeout=30)["ok"]
            continue
        with pytest.raises(JobFailed) as failed:
            producer.result(job_id, timeout=30)
        assert failed.value.error["type"] == "canceled"
        assert conn.hget(Job.key_for(job_id), "status") == b"canceled"
    assert canceled_registry(conn) and conn.zcard("rq:wip:classify") == 0
