"""Foreign data in the queue (ids that are not UTF-8, keys of another type, hashes without data or with
non-numeric fields) and a worker whose clock is wrong: the store never crashes, never half-applies a
take, and takes its times from Redis."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from rq.job import Job

import worker.store.rq as rq_store
from producer import Producer
from producer.wire.results import make_result
from worker.store import Outcome
from worker.store.rq import RedisStore
from worker.store.rqcalls import DEFAULT_RESULT_TTL_S, STARTED_TTL_S

from ..conftest import image_bytes


def redis_now(conn) -> float:
    seconds, micros = conn.time()
    return seconds + micros / 1e6


def test_foreign_ids_and_hashes_never_half_apply_a_take(redis_url, conn):
    good = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 2)
    conn.rpush("rq:queue:classify", b"\xff\xfe-not-utf8")  # no client can name this id
    conn.hset(b"rq:job:\xff\xfe-not-utf8", mapping={"data": b"x", "status": "queued"})
    conn.set("rq:job:a-string", "not a hash")
    conn.rpush("rq:queue:classify", "a-string")
    conn.hset("rq:job:no-data", mapping={"status": "queued", "lost_deliveries": "many", "retries_left": "x"})
    conn.rpush("rq:queue:classify", "no-data")
    conn.hset(
        "rq:job:odd-fields",
        mapping={"data": b"\x93", "status": "queued", "result_ttl": "soon", "enqueued_at": "yesterday"},
    )
    conn.rpush("rq:queue:classify", "odd-fields")
    store = RedisStore(conn, "classify", "w1")
    store.register()
    jobs = {j.job_id: j for j in store.take(16, 1.0)}
    assert set(jobs) == {*good, "no-data", "odd-fields"}  # the not-UTF-8 id dropped, the string key gone
    assert store.dropped == 1
    assert jobs[good[0]].read_error is None and jobs[good[0]].kwargs["image"]
    assert jobs["no-data"].read_error  # fails as bad_job_data
    assert jobs["odd-fields"].read_error
    assert conn.llen("rq:queue:classify") == 0 and conn.llen("rq:queue:classify:intermediate") == 0
    assert conn.hget(b"rq:job:\xff\xfe-not-utf8", "status") == b"queued"  # nothing written for it
    assert conn.zcard("rq:wip:classify") == 4  # every job it started is registered: none half-started
    for job_id in jobs:
        assert conn.hget(Job.key_for(job_id), "status") == b"started"


def test_a_finish_skips_a_job_whose_key_changed_type_and_records_the_rest(redis_url, conn):
    ids = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 2)
    store = RedisStore(conn, "classify", "w1")
    store.register()
    jobs = store.take(2, 1.0)
    conn.delete(Job.key_for(ids[0]))
    conn.set(Job.key_for(ids[0]), "replaced by something else")
    outcomes = [
        Outcome(j, make_result(j.job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)]))
        for j in jobs
    ]
    assert store.finish(outcomes) == [ids[0]]
    assert conn.get(Job.key_for(ids[0])) == b"replaced by something else"
    assert conn.hget(Job.key_for(ids[1]), "status") == b"finished"
    assert conn.zcard("rq:wip:classify") == 0


class SevenMinutesBehind(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) - timedelta(minutes=7)


def test_scores_and_times_come_from_redis_not_the_workers_clock(redis_url, conn, monkeypatch):
    monkeypatch.setattr(rq_store, "datetime", SevenMinutesBehind)
    monkeypatch.setattr(rq_store.time, "time", lambda: time.monotonic() - 420 + (time.time() - time.monotonic()))
    (job_id,) = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")])
    store = RedisStore(conn, "classify", "w1")
    store.register()
    (job,) = store.take(1, 1.0)
    now = redis_now(conn)
    assert abs(job.started_at - now) < 5 and abs(job.now() - now) < 5
    (score,) = conn.zrange("rq:wip:classify", 0, -1, withscores=True)
    assert abs(score[1] - (now + STARTED_TTL_S)) < 5
    started = Job.fetch(job_id, connection=conn).started_at.timestamp()
    assert abs(started - now) < 5
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    store.finish([Outcome(job, result)])
    ttl = job.result_ttl_s if job.result_ttl_s is not None else DEFAULT_RESULT_TTL_S
    (entry,) = conn.zrange("rq:finished:classify", 0, -1, withscores=True)
    assert abs(entry[1] - (redis_now(conn) + ttl)) < 5
    assert abs(Job.fetch(job_id, connection=conn).ended_at.timestamp() - redis_now(conn)) < 5


def test_ids_are_logged_escaped_so_a_queued_id_cannot_forge_a_log_line(redis_url, conn, caplog):
    forged = "gone\nERROR worker crashed: rm -rf"
    conn.rpush("rq:queue:classify", forged)  # no job hash: answered job_gone, and logged
    job_id = "held\r\nERROR \x1b[31mforged"  # RQ's enqueue refuses such an id; anyone with HSET and RPUSH can
    conn.hset(f"rq:job:{job_id}", mapping={"status": "queued", "data": b"x"})
    conn.rpush("rq:queue:classify", job_id)
    conn.hset(f"rq:results:{job_id}", "x", "y")  # its result stream of the wrong type: left queued, logged
    store = RedisStore(conn, "classify", "w1")
    store.register()
    with caplog.at_level("INFO"):
        assert store.take(8, 0.01) == []
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "gone\\nERROR worker crashed" in text and "held\\r\\nERROR \\x1b[31mforged" in text
    assert not any(line.startswith("ERROR") for line in text.splitlines()) and "\x1b" not in text
