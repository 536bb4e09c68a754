"""The Redis store's reaper on what only Redis has: ids stranded between a take's move and its start."""

from __future__ import annotations

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
