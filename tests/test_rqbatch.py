"""The RQ layer and the batch runner in-process against a real Redis: one batch, constant round trips."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job, JobStatus

from producer import Producer
from producer.serializer import MsgpackSerializer
from worker.config import WorkerSettings
from worker.loop import BatchRunner
from worker.model import load_model
from worker.rqbatch import BatchWorker, RQBatch

from .conftest import all_images


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
def batch_setup(redis_url, tiny_model_path):
    conn = CountingRedis.from_url(redis_url)
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    worker = BatchWorker([queue], connection=conn, name="test:cpu:1", serializer=MsgpackSerializer)
    worker.register_birth()
    rqb = RQBatch(worker, queue)
    rqb.scripts.load()
    settings = WorkerSettings(model=str(tiny_model_path), batch_size=32)
    model = load_model(tiny_model_path, max_batch=32)
    with ThreadPoolExecutor(4) as pool:
        yield conn, rqb, BatchRunner(model, settings, pool)
    worker.register_death()


def one_batch(rqb: RQBatch, runner: BatchRunner, max_jobs: int) -> tuple[list, int]:
    before = rqb.connection.counter["round_trips"]
    ids = rqb.take(max_jobs, max_wait_s=0.0, idle_wait_s=1.0)
    taken = rqb.start(ids)
    outcomes = runner.run(taken, rqb.worker.name)
    rqb.finish(outcomes, started_at=taken[0].job.started_at)
    return outcomes, rqb.connection.counter["round_trips"] - before


def test_one_batch_holds_every_sample_file_and_all_succeed(batch_setup, redis_url):
    conn, rqb, runner = batch_setup
    paths = all_images()
    ids = Producer(redis_url).enqueue_many(paths)
    outcomes, _ = one_batch(rqb, runner, max_jobs=len(paths))
    assert [o.taken.job_id for o in outcomes] == ids
    assert all(o.result["ok"] for o in outcomes), [o.result["error"] for o in outcomes if not o.result["ok"]]
    for job_id in ids:
        job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        assert job.get_status() == JobStatus.FINISHED and job.return_value()["ok"]
    assert rqb.queue.started_job_registry.count == 0
    assert int(conn.hget(rqb.worker.key, "successful_job_count")) == len(paths)


def test_round_trips_per_batch_do_not_grow_with_batch_size(batch_setup, redis_url):
    _, rqb, runner = batch_setup
    producer = Producer(redis_url)
    image = all_images()[0].read_bytes()
    trips = {}
    for n in (2, 8, 32):
        producer.enqueue_many([image] * n)
        outcomes, trips[n] = one_batch(rqb, runner, max_jobs=n)
        assert len(outcomes) == n and all(o.result["ok"] for o in outcomes)
    assert trips[2] == trips[8] == trips[32] <= 4, trips


def test_a_queued_id_whose_job_hash_is_gone_is_dropped_and_its_mates_run(batch_setup, redis_url):
    conn, rqb, runner = batch_setup
    ids = Producer(redis_url).enqueue_many([p.read_bytes() for p in all_images()[:3]])
    conn.delete(Job.key_for(ids[1]))
    outcomes, _ = one_batch(rqb, runner, max_jobs=8)
    assert [o.taken.job_id for o in outcomes] == [ids[0], ids[2]]
    assert conn.llen(rqb.intermediate_key) == 0
