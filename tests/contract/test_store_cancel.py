"""Cancellation in the store's scripts, on real Redis: TAKE never starts a canceled job (whether it is
popped from the queue or was moved off it by a blocking wait), and FINISH ends a job canceled while it
ran as an ok: false ``canceled`` result, published, fed and kept in RQ's canceled registry."""

from __future__ import annotations

from rq import Queue
from rq.job import Job

from producer import CancelOutcome, JobOptions, Producer
from producer.wire import keys
from producer.wire.results import make_result, parse_exc_string
from producer.wire.serializer import MsgpackSerializer, loads
from worker.store import Outcome
from worker.store.rq import RedisStore

from ..conftest import wait_for

QUEUE = "classify"


def store(conn) -> RedisStore:
    s = RedisStore(conn, QUEUE, "w1")
    s.register()
    return s


def fetch(conn, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)


def test_take_does_not_start_a_queued_job_whose_status_is_canceled(redis_url, conn):
    before, canceled, after = Producer(redis_url).enqueue_many([b"a", b"b", b"c"])
    conn.hset(keys.job(canceled), "status", "canceled")  # canceled, its id still queued (a cancel racing a take)
    jobs = store(conn).take(8, 1.0)
    assert [j.job_id for j in jobs] == [before, after] and conn.llen(keys.queue(QUEUE)) == 0  # dropped, not re-queued
    assert fetch(conn, canceled).get_status().value == "canceled"
    assert not any(m.startswith(canceled.encode()) for m in conn.zrange(keys.started(QUEUE), 0, -1))
    assert conn.hget(keys.job(canceled), "worker_name") in (None, b"")  # nothing of a start was written


def test_start_moved_does_not_start_a_job_canceled_after_the_blocking_move(redis_url, conn):
    (job_id,) = Producer(redis_url).enqueue_many([b"a"])
    moved = conn.lmove(keys.queue(QUEUE), keys.intermediate(QUEUE), "LEFT", "RIGHT")  # a worker's blocking wait
    fetch(conn, job_id).cancel()  # RQ's own cancel
    assert store(conn).start_moved([moved], 8) == []
    assert conn.zcard(keys.started(QUEUE)) == 0 and conn.llen(keys.intermediate(QUEUE)) == 0
    assert conn.llen(keys.queue(QUEUE)) == 0
    assert fetch(conn, job_id).get_status().value == "canceled"


def test_a_job_canceled_while_it_ran_ends_canceled_published_and_fed(redis_url, conn):
    (job_id,) = Producer(redis_url).enqueue_many([b"a"])
    worker = store(conn)
    (job,) = worker.take(1, 1.0)
    channel = conn.pubsub()
    channel.subscribe(keys.results_channel(QUEUE))
    wait_for(lambda: channel.get_message(timeout=1.0))  # the subscription is confirmed
    fetch(conn, job_id).cancel()  # drops its started entry, sets status canceled
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    assert worker.finish([Outcome(job, result)]) == []  # ended as canceled, not skipped
    ended = fetch(conn, job_id)
    assert ended.get_status().value == "canceled"
    assert Queue(QUEUE, connection=conn, serializer=MsgpackSerializer).canceled_job_registry.get_job_ids() == [job_id]
    (rq_result,) = ended.results()
    assert rq_result.type == rq_result.Type.FAILED and parse_exc_string(rq_result.exc_string)["type"] == "canceled"
    (entry,) = conn.xrange(keys.results_stream(QUEUE))
    fed = loads(entry[1][b"result"])
    assert fed["job_id"] == job_id and fed["ok"] is False and fed["error"]["type"] == "canceled"
    message = wait_for(lambda: channel.get_message(timeout=1.0))
    assert message["data"] == entry[1][b"result"]  # the same bytes published
    assert conn.scard(keys.worker_executions("w1")) == 0 and conn.exists(keys.execution(job_id, job.execution_id)) == 0
    assert conn.hget(keys.worker("w1"), "state") == b"idle"


def test_canceled_jobs_and_their_results_expire_as_failed_ones_do(redis_url, conn):
    # not kept for ever with their images: TAKE removed a running job's TTL, and a queued job has none
    producer = Producer(redis_url, options=JobOptions(failure_ttl_s=600))
    running, queued = producer.enqueue_many([b"a", b"b"])
    worker = store(conn)
    (job,) = worker.take(1, 1.0)
    assert job.job_id == running and conn.ttl(keys.job(running)) == -1 and conn.ttl(keys.job(queued)) == -1
    assert producer.cancel(queued) is CancelOutcome.CANCELED
    assert producer.cancel(running) is CancelOutcome.CANCELING
    assert 590 < conn.ttl(keys.job(queued)) <= 600 and 590 < conn.ttl(keys.job(running)) <= 600
    result = make_result(running, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    assert worker.finish([Outcome(job, result)]) == []  # ended canceled
    assert 590 < conn.ttl(keys.results(running)) <= 600 and 590 < conn.ttl(keys.job(running)) <= 600
