"""Cancel is one atomic script, put between each pair of a worker's steps on real Redis (7 and 6.2): the
worker is driven from here step by step (blocking move, start, finish, reaper), so every interleaving a
race with a take could produce is tested, not hoped for. A raced cancel either prevents the run or ends
the job canceled, never ok; what it answers says which; and RQ's own API reads the state it leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from producer import AsyncProducer, CancelOutcome, CannotCancel, JobFailed, JobNotFound, Producer
from producer.wire import keys
from producer.wire.results import make_result
from producer.wire.serializer import MsgpackSerializer
from worker.store import Outcome
from worker.store.rq import RedisStore

QUEUE = "classify"


def store(conn, **options) -> RedisStore:
    s = RedisStore(conn, QUEUE, "w1", **options)
    s.register()
    return s


def fetch(conn, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)


def rq_queue(conn, name: str = QUEUE) -> Queue:
    return Queue(name, connection=conn, serializer=MsgpackSerializer)


def where(conn, job_id: str, queue: str = QUEUE) -> dict[str, bool]:
    """Which of RQ's lists and registries of ``queue`` hold ``job_id`` (RQ's own API reads them)."""
    q = rq_queue(conn, queue)
    return {
        "queued": job_id in q.get_job_ids(),
        "moved": job_id.encode() in conn.lrange(keys.intermediate(queue), 0, -1),
        "started": job_id in q.started_job_registry.get_job_ids(cleanup=False),
        "finished": job_id in q.finished_job_registry.get_job_ids(cleanup=False),
        "failed": job_id in q.failed_job_registry.get_job_ids(cleanup=False),
        "canceled": job_id in q.canceled_job_registry.get_job_ids(cleanup=False),
    }


def only(*names: str) -> dict[str, bool]:
    return {name: name in names for name in ("queued", "moved", "started", "finished", "failed", "canceled")}


def ok(job_id: str) -> dict:
    return make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("cat", 0.9)])


def failed(job_id: str) -> dict:
    error = {"type": "unsupported_image", "message": "not an image"}
    return make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, error=error)


def assert_canceled(producer: Producer, conn, job_id: str) -> None:
    """The job ended canceled: RQ says so, it sits in the canceled registry alone, and result() says so at once."""
    assert fetch(conn, job_id).get_status() == JobStatus.CANCELED
    assert where(conn, job_id) == only("canceled")
    started = time.monotonic()
    with pytest.raises(JobFailed) as answered:
        producer.result(job_id, timeout=5)
    assert answered.value.error["type"] == "canceled" and time.monotonic() - started < 0.5


def test_a_queued_job_canceled_is_never_taken(redis_url, conn):
    producer = Producer(redis_url)
    keep, drop = producer.enqueue_many([b"a", b"b"])
    outcome = producer.cancel(drop)
    assert outcome is CancelOutcome.CANCELED and outcome  # true: canceled now
    assert [job.job_id for job in store(conn).take(8, 0.1)] == [keep]
    assert_canceled(producer, conn, drop)
    assert conn.exists(keys.results(drop)) == 0  # it never ran


class Interleaving:
    """A ``connect`` for ``Producer`` whose client runs ``step`` (a worker's) just before its ``at``-th send to
    Redis (from 0; the connection's own handshake counts); ``sends``: how many sends it made."""

    def __init__(self, redis_url: str, step: Callable[[], None] = lambda: None, at: int = -1) -> None:
        self.sends = 0
        counter = self

        class Hooked(redis.Connection):
            def send_packed_command(self, command, check_health=True):
                if counter.sends == at:
                    step()
                counter.sends += 1
                super().send_packed_command(command, check_health)

        self.pool = redis.ConnectionPool.from_url(redis_url, connection_class=Hooked)

    def connect(self, url: str) -> redis.Redis:
        return redis.Redis(connection_pool=self.pool)


def test_a_worker_starting_the_job_before_any_round_trip_of_the_cancel_never_finishes_it_ok(redis_url, conn):
    worker, producer = store(conn), Producer(redis_url)
    conn.script_flush()
    dry = Interleaving(redis_url)
    assert Producer(redis_url, connect=dry.connect).cancel(producer.enqueue(b"probe"))
    assert dry.sends >= 1
    for at in range(dry.sends):  # the worker's take just before each send of the cancel in turn
        conn.script_flush()  # so each cancel makes the dry run's sends
        job_id, taken = producer.enqueue(b"a"), []
        hook = Interleaving(redis_url, lambda into=taken: into.extend(worker.take(1, 0)), at)
        assert Producer(redis_url, connect=hook.connect).cancel(job_id)  # canceled now, whatever it found
        assert [job.job_id for job in taken] == [job_id]
        worker.finish([Outcome(taken[0], ok(job_id))])  # the worker ends its run as it would
        assert_canceled(producer, conn, job_id)


def test_a_cancel_between_the_blocking_move_and_the_start_prevents_the_run(redis_url, conn):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([b"a"])
    worker = store(conn)
    moved = worker.wait_one(1.0)  # the worker's blocking move: the id sits in the intermediate list
    assert moved == job_id.encode() and where(conn, job_id) == only("moved")
    assert producer.cancel(job_id) is CancelOutcome.CANCELED
    assert worker.start_moved([moved], 8) == []  # the worker's next step starts nothing
    assert_canceled(producer, conn, job_id)


def test_a_worker_lost_between_its_move_and_its_start_never_brings_a_canceled_job_back(redis_url, conn):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([b"a"])
    worker = store(conn, stranded_s=0.0)
    assert worker.wait_one(1.0) == job_id.encode()  # moved, then the worker dies before its start
    assert producer.cancel(job_id) is CancelOutcome.CANCELED
    for _ in range(2):  # a reaper's passes: the first marks what is stranded, the second gives it back
        worker.reap()
    assert worker.take(8, 0.1) == []
    assert_canceled(producer, conn, job_id)


@pytest.mark.parametrize("ending", ["ok", "failed", "retry"])
def test_a_cancel_between_the_start_and_the_finish_ends_the_job_canceled_never_ok(redis_url, conn, ending):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([b"a"])
    worker = store(conn)
    (job,) = worker.take(1, 1.0)
    assert where(conn, job_id) == only("started")
    outcome = producer.cancel(job_id)
    assert outcome is CancelOutcome.CANCELING and outcome  # true: canceled now, while it runs
    assert where(conn, job_id) == only("canceled")
    result = ok(job_id) if ending == "ok" else failed(job_id)
    assert worker.finish([Outcome(job, result, retry=ending == "retry")]) == []  # answered, not skipped
    assert_canceled(producer, conn, job_id)
    (answer,) = fetch(conn, job_id).results()
    assert answer.type == answer.Type.FAILED and "canceled" in answer.exc_string
    assert worker.take(8, 0.1) == []  # a retry did not put it back
    assert producer.cancel(job_id) is CancelOutcome.ALREADY_CANCELED


def canceled_while_running(redis_url: str, conn) -> tuple[Producer, RedisStore, str, Any]:
    """A job started by worker ``w1``, then canceled: the producer, the worker, the id and the job in hand."""
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([b"a"])
    worker = store(conn)
    (job,) = worker.take(1, 1.0)
    producer.cancel(job_id)
    return producer, worker, job_id, job


def fed(conn, job_id: str) -> int:
    """How many entries the results feed holds for ``job_id``."""
    return sum(e[b"job_id"] == job_id.encode() for _, e in conn.xrange(keys.results_stream(QUEUE)))


def test_a_finish_retried_after_its_reply_was_lost_announces_a_canceled_job_once(redis_url, conn):
    producer, worker, job_id, job = canceled_while_running(redis_url, conn)
    pubsub = conn.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.results_channel(QUEUE))
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    outcome = Outcome(job, ok(job_id))
    assert worker.finish([outcome]) == []
    assert worker.finish([outcome]) == [job_id]  # the same call again (its reply was lost): skipped
    assert fed(conn, job_id) == 1 and len(fetch(conn, job_id).results()) == 1
    heard = [pubsub.get_message(timeout=0.2) for _ in range(3)]
    assert len([m for m in heard if m is not None]) == 1  # one announcement on the channel
    assert_canceled(producer, conn, job_id)


def test_a_canceled_job_is_still_answered_after_an_outage_outlasted_the_workers_key(redis_url, conn):
    producer, worker, job_id, job = canceled_while_running(redis_url, conn)
    conn.delete(keys.worker("w1"), keys.worker_executions("w1"))  # expired while Redis was away (TTL 20 s)
    assert worker.finish([Outcome(job, ok(job_id))]) == []  # answered: canceled, with its announcement
    assert_canceled(producer, conn, job_id)
    assert fed(conn, job_id) == 1


def test_a_cancel_after_the_finish_changes_nothing(redis_url, conn):
    producer = Producer(redis_url)
    done, broken = producer.enqueue_many([b"a", b"b"])
    worker = store(conn)
    jobs = {job.job_id: job for job in worker.take(2, 1.0)}
    worker.finish([Outcome(jobs[done], ok(done)), Outcome(jobs[broken], failed(broken))])
    for job_id, registry in ((done, "finished"), (broken, "failed")):
        outcome = producer.cancel(job_id)
        assert outcome is CancelOutcome.ALREADY_FINAL and not outcome
        assert fetch(conn, job_id).get_status() == JobStatus(registry) and where(conn, job_id) == only(registry)
    assert producer.result(done, timeout=1)["ok"]
    with pytest.raises(JobFailed) as answered:
        producer.result(broken, timeout=1)
    assert answered.value.error["type"] == "unsupported_image"


def test_each_outcome_of_a_second_cancel_and_of_no_job(redis_url, conn):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([b"a"])
    assert producer.cancel(job_id) is CancelOutcome.CANCELED
    again = producer.cancel(job_id)
    assert again is CancelOutcome.ALREADY_CANCELED and not again and again == "already_canceled"
    with pytest.raises(JobNotFound):
        producer.cancel("no-such-job")


def test_the_state_left_is_the_state_rqs_own_cancel_leaves(redis_url, conn):
    producer = Producer(redis_url)
    ours_queued, theirs_queued, ours_running, theirs_running = producer.enqueue_many([b"a", b"b", b"c", b"d"])
    conn.delete(keys.queue(QUEUE))
    conn.rpush(keys.queue(QUEUE), ours_running, theirs_running, ours_queued, theirs_queued)
    worker = store(conn)
    assert [job.job_id for job in worker.take(2, 1.0)] == [ours_running, theirs_running]
    producer.cancel(ours_queued), fetch(conn, theirs_queued).cancel()
    producer.cancel(ours_running), fetch(conn, theirs_running).cancel()
    for ours, theirs in ((ours_queued, theirs_queued), (ours_running, theirs_running)):
        assert where(conn, ours) == where(conn, theirs) == only("canceled")
        assert fetch(conn, ours).get_status() == fetch(conn, theirs).get_status() == JobStatus.CANCELED
        ours_score, theirs_score = (conn.zscore(keys.canceled(QUEUE), i) for i in (ours, theirs))
        assert abs(ours_score - theirs_score) <= 1 and abs(ours_score - time.time()) < 5  # RQ's score: now
        with pytest.raises(InvalidJobOperation):  # RQ sees ours as canceled too
            fetch(conn, ours).cancel()


def test_a_key_of_the_wrong_type_stops_the_cancel_before_it_writes_anything(redis_url, conn):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([b"a"])
    conn.hset(keys.canceled(QUEUE), "x", "y")  # written by anyone who may write the key
    with pytest.raises(CannotCancel, match=keys.canceled(QUEUE)):
        producer.cancel(job_id)
    assert fetch(conn, job_id).get_status() == JobStatus.QUEUED and rq_queue(conn).get_job_ids() == [job_id]


def test_a_job_of_another_queue_is_canceled_on_its_own_queue(redis_url, conn):
    (job_id,) = Producer(redis_url, queue="high").enqueue_many([b"a"])
    assert Producer(redis_url).cancel(job_id) is CancelOutcome.CANCELED
    assert where(conn, job_id, "high") == only("canceled") and conn.zcard(keys.canceled(QUEUE)) == 0


def test_the_script_is_sent_whole_once_and_by_its_digest_after(redis_url, conn):
    conn.script_flush()
    producer = Producer(redis_url)
    first, second = producer.enqueue_many([b"a", b"b"])
    assert producer.cancel(first) is CancelOutcome.CANCELED  # NOSCRIPT, then EVAL (which caches it)
    assert producer.cancel(second) is CancelOutcome.CANCELED


def test_the_async_producer_cancels_the_same_way(redis_url, conn):
    (job_id,) = Producer(redis_url).enqueue_many([b"a"])

    async def twice() -> list[CancelOutcome]:
        async with AsyncProducer(redis_url) as producer:
            return [await producer.cancel(job_id), await producer.cancel(job_id)]

    assert asyncio.run(twice()) == [CancelOutcome.CANCELED, CancelOutcome.ALREADY_CANCELED]
