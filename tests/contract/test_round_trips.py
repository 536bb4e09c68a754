"""The Redis store's cost per batch: round trips that do not grow with the batch size (real Redis)."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.client import Pipeline
from rq.job import Job, JobStatus

from producer import Producer
from producer.wire.results import make_result
from producer.wire.serializer import MsgpackSerializer
from worker.store import Outcome
from worker.store.rq import RedisStore

from ..conftest import wait_for


class CountingPipeline(Pipeline):
    def execute(self, raise_on_error: bool = True):
        self.client_counter["round_trips"] += 1
        return super().execute(raise_on_error)


class CountingRedis(redis.Redis):
    """A real client that counts round trips: each command, or each pipeline, is one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counter = {"round_trips": 0}

    def execute_command(self, *args, **options):
        self.counter["round_trips"] += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint=None) -> Pipeline:
        pipe = CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.client_counter = self.counter
        return pipe


@pytest.fixture
def store(redis_url):
    conn = CountingRedis.from_url(redis_url)
    store = RedisStore(conn, "classify", "test:cpu:1")
    store.register()
    yield store
    store.unregister()


def ok(job) -> Outcome:
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w", timings_ms={}, meta={}, topk=[("a", 1.0)]))


def test_a_batch_costs_three_round_trips_whatever_its_size_when_jobs_are_waiting(store, redis_url, conn):
    producer, trips = Producer(redis_url), {}
    for n in (2, 8, 32):
        ids = producer.enqueue_many([b"img"] * n)
        before = store.connection.counter["round_trips"]
        jobs = store.take(n, 1.0)
        store.finish([ok(job) for job in jobs])
        trips[n] = store.connection.counter["round_trips"] - before
        assert [j.job_id for j in jobs] == ids
        assert {Job.fetch(i, connection=conn, serializer=MsgpackSerializer).get_status() for i in ids} == {
            JobStatus.FINISHED
        }
    assert trips[2] == trips[8] == trips[32] == 3, trips  # start script, one pipelined read, finish script


def test_a_take_on_an_empty_queue_blocks_then_starts_in_one_more_round_trip(store, redis_url, conn):
    found: list = []
    before = store.connection.counter["round_trips"]
    taker = threading.Thread(target=lambda: found.extend(store.take(8, 5.0)))
    taker.start()
    blocked = lambda: any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in conn.client_list())  # noqa: E731
    assert wait_for(blocked, 5)  # the empty script has run: the take waits in BLMOVE (else a busy box races it)
    (job_id,) = Producer(redis_url).enqueue_many([b"img"])
    taker.join(10)
    assert [j.job_id for j in found] == [job_id]
    assert store.connection.counter["round_trips"] - before == 4  # the empty script, BLMOVE, the script, the read


def test_a_queued_id_whose_job_hash_is_gone_is_dropped_and_answered(store, redis_url, conn):
    ids = Producer(redis_url).enqueue_many([b"a", b"b", b"c"])
    conn.delete(Job.key_for(ids[1]))
    jobs = store.take(8, 1.0)
    assert [j.job_id for j in jobs] == [ids[0], ids[2]]
    assert conn.llen("rq:queue:classify") == 0 and conn.llen("rq:queue:classify:intermediate") == 0


def test_job_data_that_inflates_past_the_limit_is_refused_unread(redis_url, conn):
    import zlib

    bomb = zlib.compress(b"\0" * (40 << 20), 9)  # ~40 KiB that inflate to 40 MiB
    conn.hset("rq:job:bomb", mapping={"data": bomb, "status": "queued", "origin": "classify"})
    conn.rpush("rq:queue:classify", "bomb")
    store = RedisStore(conn, "classify", "w1", max_data_bytes=1 << 20)
    store.register()
    (job,) = store.take(1, 1.0)
    assert job.job_id == "bomb" and "inflates past the limit" in job.read_error and job.kwargs == {}
