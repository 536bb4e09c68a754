"""FINISH on a nearly full Redis (90% of maxmemory): a result's large meta is stored once, in the job's data,
and RQ's result stream and the feed carry the result with ``meta`` nil; the channel still carries it whole; the
result cache is not written. ``Producer.result`` and the feed reader give the meta back. Below 90%, or without a
maxmemory, nothing changes."""

from __future__ import annotations

import secrets

import pytest
import redis
from rq.job import Job

from producer import Producer
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import MsgpackSerializer, loads
from worker.store import Outcome
from worker.store.rq import RedisStore

from ..acls import drop_users, set_users
from ..conftest import image_bytes, wait_for

CACHE = {"tag": "m@1", "precision": "fp32", "decode": "cpu", "topk": 5, "ttl_s": 600}


def finish_three(conn, redis_url: str, used: float, worker_url: str | None = None) -> tuple[list[str], list[dict]]:
    """Three jobs finished ok, with Redis's maxmemory set so that it is ``used`` full: two with a 4 KB meta,
    one with a small one, each with a digest (cacheable)."""
    big = {"ad": secrets.token_hex(2000)}
    metas = [big, {"ad": "7"}, {**big, "n": 2}]
    ids = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 3, metas=metas)
    store = RedisStore(redis.Redis.from_url(worker_url) if worker_url else conn, "classify", "w1", cache=CACHE)
    store.register()
    jobs = store.take(3, 1.0)
    # 1.05: over maxmemory, far from the 90% threshold whatever Redis's own memory does meanwhile (the
    # scripts run on a full Redis); 0.5: far below it
    conn.config_set("maxmemory", int(int(conn.info("memory")["used_memory"]) / used))
    outcomes = [
        Outcome(job, make_result(job.job_id, model="m@1", worker="w1", timings_ms={}, meta=job.kwargs["meta"],
                                 topk=[("a", 1.0)]), digest=f"{n:064x}")
        for n, job in enumerate(jobs)
    ]  # fmt: skip
    store.finish(outcomes)
    return ids, metas


def stored(conn, job_id: str) -> tuple[object, object]:
    """The meta as RQ's result stream and as the feed hold it."""
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    fed = {loads(f[b"result"])["job_id"]: loads(f[b"result"]) for _, f in conn.xrange(results_stream("classify"))}
    return job.return_value()["meta"], fed[job_id]["meta"]


@pytest.fixture
def restore_maxmemory(conn):
    yield
    conn.config_set("maxmemory", 0)
    drop_users(conn)


def test_nearly_full_a_large_meta_is_stored_once_and_readers_give_it_back(redis_url, conn, restore_maxmemory):
    producer_url, worker_url = set_users(conn, redis_url)  # docs/security.md's users: nothing more is needed
    pubsub = conn.pubsub()
    pubsub.subscribe("classify:results")
    feed = Producer(producer_url).results("readers", start="0")
    ids, metas = finish_three(conn, redis_url, used=1.05, worker_url=worker_url)
    conn.config_set("maxmemory", 0)
    assert stored(conn, ids[0]) == (None, None) and stored(conn, ids[2]) == (None, None)  # once: in the job's data
    assert stored(conn, ids[1]) == (metas[1], metas[1])  # a small meta: not worth a second message
    assert Job.fetch(ids[0], connection=conn, serializer=MsgpackSerializer).kwargs["meta"] == metas[0]
    assert not conn.keys("rq:adclassify:cache:*")  # optional: not written
    published = []

    def three_published() -> bool:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            published.append(loads(message["data"]))
        return len(published) >= 3

    assert wait_for(three_published, 10)
    assert [r["meta"] for r in published] == metas  # the channel keeps no copy: it carries the meta whole
    producer = Producer(producer_url)
    assert [producer.result(job_id, timeout=5)["meta"] for job_id in ids] == metas
    assert [feed.get(timeout_s=5)["meta"] for _ in ids] == metas


def test_with_room_results_keep_their_meta_everywhere_and_are_cached(redis_url, conn, restore_maxmemory):
    ids, metas = finish_three(conn, redis_url, used=0.5)
    assert [stored(conn, job_id) for job_id in ids] == [(m, m) for m in metas]
    assert len(conn.keys("rq:adclassify:cache:*")) == 3
