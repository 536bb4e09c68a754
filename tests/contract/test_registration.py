"""A worker's registration after Redis lost it (a restart without persistence): takes and finishes never
re-create a partial worker hash, so the next heartbeat finds the key gone and registers again, and RQ (and
``producer status``) list the worker."""

from __future__ import annotations

from rq import Worker

from producer import Producer
from producer.status import gather
from producer.wire.results import make_result
from worker.store import Outcome, WorkerStats
from worker.store.rq import RedisStore


def ok(job) -> Outcome:
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)]))


def test_takes_and_finishes_after_redis_lost_everything_leave_the_reregistration_to_the_heartbeat(redis_url, conn):
    store = RedisStore(conn, "classify", "w1", worker_ttl_s=6)
    store.register()
    Producer(redis_url).enqueue_many([b"a"])
    store.finish([ok(job) for job in store.take(1, 0.1)])
    conn.flushall()  # what a restart without persistence leaves
    Producer(redis_url).enqueue_many([b"b", b"c"])
    jobs = store.take(2, 0.1)  # work goes on before the next beat
    store.finish([ok(job) for job in jobs])
    assert conn.exists("rq:worker:w1") == 0  # no partial hash that would look registered
    store.heartbeat(WorkerStats())
    assert [w.name for w in Worker.all(connection=conn)] == ["w1"]
    assert [(w["name"], w["state"]) for w in gather(conn, "classify")["workers"]] == [("w1", "idle")]  # not '?'
    assert conn.hget("rq:worker:w1", "birth") and conn.ttl("rq:worker:w1") > 0
    Producer(redis_url).enqueue_many([b"d"])
    store.finish([ok(job) for job in store.take(1, 0.1)])  # registered again: counted from here on
    assert conn.hget("rq:worker:w1", "successful_job_count") == b"1"


def test_a_worker_key_of_another_type_is_no_registration(redis_url, conn):
    store = RedisStore(conn, "classify", "w1", worker_ttl_s=6)
    conn.set("rq:worker:w1", "not a worker's hash")
    store.register()  # free: nothing but a worker writes that key, so no live worker holds the name
    assert conn.type("rq:worker:w1") == b"hash" and [w.name for w in Worker.all(connection=conn)] == ["w1"]
