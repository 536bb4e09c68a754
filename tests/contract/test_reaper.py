"""The Redis store's reaper on what only Redis has: ids stranded between a take's move and its start."""

from __future__ import annotations

import pytest
from rq.job import Job

from producer import Producer
from worker.store.rq import RedisStore

from ..conftest import image_bytes


def test_an_id_stranded_in_the_intermediate_list_is_given_back_uncounted(redis_url, conn):
    store = RedisStore(conn, "classify", "me:cpu:1", stranded_s=0.0)
    store.register()
    stranded, other = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 2)
    # a worker moved one id to the intermediate list and died before starting it
    conn.lmove("rq:queue:classify", "rq:queue:classify:intermediate", "LEFT", "RIGHT")
    assert store.reap() == ([], [])  # first sighting: only marked
    assert store.reap() == ([stranded], [])  # still there: given back, not counted as lost
    assert conn.llen("rq:queue:classify:intermediate") == 0
    assert conn.hget(Job.key_for(stranded), "lost_deliveries") is None
    assert [i.decode() for i in conn.lrange("rq:queue:classify", 0, -1)] == [stranded, other]


def test_a_live_workers_started_jobs_are_left_alone(redis_url, conn):
    store = RedisStore(conn, "classify", "me:cpu:1")
    store.register()
    Producer(redis_url).enqueue_many([image_bytes("cat.jpg")])
    assert len(store.take(1, 1.0)) == 1
    assert store.reap() == ([], [])
    assert conn.zcard("rq:wip:classify") == 1


def test_a_worker_that_registered_its_death_is_reaped_at_once(redis_url, conn):
    victim, reaper = RedisStore(conn, "classify", "victim"), RedisStore(conn, "classify", "reaper")
    victim.register()
    reaper.register()
    (job_id,) = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")])
    victim.take(1, 1.0)
    victim.unregister()  # RQ keeps the key for a while, with 'death' set
    assert reaper.reap() == ([job_id], [])


def test_an_id_given_back_between_its_move_and_its_start_is_not_started_twice(redis_url, conn):
    # a worker moved the id (BLMOVE) and then stalled (GC pause, SIGSTOP) past the stranded time
    slow = RedisStore(conn, "classify", "slow", stranded_s=0.0)
    slow.register()
    (job_id,) = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")])
    conn.lmove("rq:queue:classify", "rq:queue:classify:intermediate", "LEFT", "RIGHT")
    slow.reap()
    assert slow.reap() == ([job_id], [])  # another worker's reaper gave it back to the queue
    assert slow.start_moved([job_id.encode()], 1) == []  # the stalled worker wakes up: its start finds the id gone
    assert [i.decode() for i in conn.lrange("rq:queue:classify", 0, -1)] == [job_id]  # queued once
    assert conn.hget(f"rq:job:{job_id}", "status") == b"queued" and conn.zcard("rq:wip:classify") == 0


def test_a_failure_of_a_job_given_back_meanwhile_is_not_written(redis_url, conn):
    from producer.wire.results import make_result
    from worker.store import Outcome

    dead, other = RedisStore(conn, "classify", "dead"), RedisStore(conn, "classify", "other")
    dead.register()
    other.register()
    (job_id,) = Producer(redis_url).enqueue_many([b"not an image"])
    (job,) = dead.take(1, 1.0)
    conn.delete("rq:worker:dead")
    assert other.reap() == ([job_id], [])
    error = {"type": "unsupported_image", "message": "x"}
    result = make_result(job_id, model="m", worker="dead", timings_ms={}, meta={}, error=error)
    assert dead.finish([Outcome(job, result)]) == [job_id]
    assert conn.hget(f"rq:job:{job_id}", "status") == b"queued" and conn.zcard("rq:failed:classify") == 0


def test_after_an_outage_a_store_reaps_nothing_for_one_worker_ttl():
    # the other workers' keys may have expired while they waited the outage out too: they beat again soon,
    # and their running jobs are not a dead worker's (before, they were re-queued as lost deliveries, and
    # a healthy job failed as poison after three outages)
    import redis
    from rq.job import Job

    from bench.devserver import RedisServer
    from producer import Producer
    from producer.wire.serializer import MsgpackSerializer
    from worker.store import StoreUnavailable, WorkerStats
    from worker.store.rq import RedisStore

    from ..conftest import wait_for

    server = RedisServer(extra_args=["--appendonly", "yes"]).start()  # the data outlives the restart
    try:
        conn = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=0.5)
        (job_id,) = Producer(server.url).enqueue_many([b"x"])
        other = RedisStore(conn, "classify", "other")
        other.register()
        assert [j.job_id for j in other.take(1, 1.0)] == [job_id]
        reaper = RedisStore(conn, "classify", "reaper", worker_ttl_s=2)
        reaper.register()
        server.process.terminate()
        server.process.wait(10)
        with pytest.raises(StoreUnavailable):
            reaper.heartbeat(WorkerStats())
        server.start()
        conn.delete("rq:worker:other")  # its key expired in the outage; it has not beaten again yet
        reaper.heartbeat(WorkerStats())  # Redis answers again
        assert reaper.reap() == ([], [])  # the other worker's running job is left to it
        status = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).get_status().value
        assert status == "started"
        assert wait_for(lambda: reaper.reap()[0] == [job_id], 10)  # after one TTL: it is a dead worker's
    finally:
        server.stop()


def test_a_names_takeover_requeues_its_predecessors_jobs_at_once_and_leaves_the_others_to_the_reaper(
    redis_url, conn
):
    predecessor, other = RedisStore(conn, "classify", "ad-gpu-0"), RedisStore(conn, "classify", "other")
    predecessor.register()
    other.register()
    mine, theirs = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 2)
    assert [j.job_id for j in predecessor.take(1, 1.0)] == [mine]
    assert [j.job_id for j in other.take(1, 1.0)] == [theirs]
    conn.delete("rq:worker:ad-gpu-0", "rq:worker:other")  # both keys expired (an outage, or both died)
    successor = RedisStore(conn, "classify", "ad-gpu-0", reap_deferred=True)  # a worker process just started
    successor.register()  # takes the name over: its predecessor's job now, ungated
    assert [i.decode() for i in conn.lrange("rq:queue:classify", 0, -1)] == [mine]
    assert conn.zcard("rq:wip:classify") == 1  # "other" may be waiting an outage out: its job waits a TTL
    assert successor.reap() == ([], [])
    successor.reap_gate.reap_from = 0.0  # the TTL passed, and "other" never came back
    assert successor.reap() == ([theirs], [])


def test_a_reaper_pass_drops_the_finished_and_failed_registries_expired_entries_as_rqs_workers_do(redis_url, conn):
    import time

    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    now = time.time()
    for key in ("rq:finished:classify", "rq:failed:classify"):
        conn.zadd(key, {f"old-{n}": now - 100 - n for n in range(12_000)})  # more than one chunk of 5,000
        conn.zadd(key, {"later": now + 3600, "for-ever": float("inf")})
    store = RedisStore(conn, "classify", "w1")
    store.register()
    store.reap()
    for key in ("rq:finished:classify", "rq:failed:classify"):
        assert conn.zrange(key, 0, -1) == [b"later", b"for-ever"]  # what RQ's cleanup keeps, nothing else
    assert FinishedJobRegistry("classify", connection=conn).get_job_ids(cleanup=False) == ["later", "for-ever"]
    assert FailedJobRegistry("classify", connection=conn).get_job_ids(cleanup=False) == ["later", "for-ever"]
