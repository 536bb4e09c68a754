"""TTL fields of a job's hash are anyone's to write (RQ takes any integer; a producer user may ``HSET`` the
field): a value that Redis's EXPIRE refuses (past its clock's range, not whole, not a number) must not stop
the FINISH, REAP or cancel script halfway, where it would be refused again at every try and hold up every
job of the batch (found by a security review)."""

from __future__ import annotations

import pytest
import redis

from producer import JobOptions, Producer
from producer.wire import keys
from producer.wire.jobs import MAX_TTL_S
from producer.wire.results import make_result
from worker.store import Outcome
from worker.store.rq import RedisStore

HOSTILE = [b"100000000000000000000", b"1e30", b"1.5", b"-7", b"inf", b"nan"]


def store(url: str, name: str, **kwargs) -> RedisStore:
    made = RedisStore(redis.Redis.from_url(url), "classify", name, **kwargs)
    made.register()
    return made


def ok(job) -> Outcome:
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w", timings_ms={}, meta={}, topk=[("a", 1.0)]))


def failed(job) -> Outcome:
    error = {"type": "unsupported_image", "message": "not an image"}
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w", timings_ms={}, meta={}, error=error))


def test_finish_applies_any_ttl_field_a_job_carries_and_the_batch_goes_on(redis_url, conn):
    ids = Producer(redis_url).enqueue_many([b"img"] * (2 * len(HOSTILE)))
    for job_id, value in zip(ids, HOSTILE * 2, strict=True):
        conn.hset(keys.job(job_id), mapping={"result_ttl": value, "failure_ttl": value})
    worker = store(redis_url, "w1")
    jobs = worker.take(len(ids), 0.5)
    assert len(jobs) == len(ids)
    half = len(HOSTILE)
    assert worker.finish([ok(j) for j in jobs[:half]] + [failed(j) for j in jobs[half:]]) == []
    statuses = [conn.hget(keys.job(i), "status") for i in ids]
    assert statuses == [b"finished"] * half + [b"failed"] * half
    for job_id, value in zip(ids, HOSTILE * 2, strict=True):
        ttl = conn.ttl(keys.job(job_id))
        if value in (b"-7",):
            assert ttl == -1  # kept for ever, as RQ reads a negative TTL
        elif value in (b"1.5",):
            assert 0 <= ttl <= 1 or ttl == -2  # one whole second
        elif value == b"nan":
            assert 0 < ttl <= 31536000  # no number: the job's data is unreadable, its TTL RQ's default
        else:
            assert ttl > 10**9  # capped at MAX_TTL_S


def test_the_reaper_fails_a_poison_job_whatever_its_failure_ttl_says(redis_url, conn):
    (job_id,) = Producer(redis_url).enqueue_many([b"img"])
    conn.hset(keys.job(job_id), mapping={"failure_ttl": b"1e30", "lost_deliveries": 1})
    victim = store(redis_url, "victim")
    victim.take(1, 0.5)
    conn.delete(keys.worker("victim"))
    requeued, poison = store(redis_url, "reaper", max_deliveries=2).reap()
    assert (requeued, poison) == ([], [job_id]) and conn.hget(keys.job(job_id), "status") == b"failed"
    assert conn.ttl(keys.job(job_id)) > 10**9


def test_a_cancel_goes_through_whatever_the_failure_ttl_field_says(redis_url, conn):
    producer = Producer(redis_url)
    job_id = producer.enqueue(b"img")
    conn.hset(keys.job(job_id), "failure_ttl", b"100000000000000000000")
    assert producer.cancel(job_id)
    assert conn.hget(keys.job(job_id), "status") == b"canceled" and 0 < conn.ttl(keys.job(job_id)) <= MAX_TTL_S


@pytest.mark.parametrize("field", ["result_ttl_s", "failure_ttl_s"])
def test_job_options_refuse_a_ttl_redis_could_not_apply(field):
    with pytest.raises(ValueError, match=field):
        JobOptions(**{field: MAX_TTL_S + 1})
    assert getattr(JobOptions(**{field: -1}), field) == -1
