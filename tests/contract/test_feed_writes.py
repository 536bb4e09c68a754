"""The durable results feed, as the store writes it: every final result (ok, failed, poison,
job_gone) is appended to ``<queue>:results:stream`` in the same atomic step that publishes it,
with the same bytes; retries are not final and are not fed; the feed is capped."""

from __future__ import annotations

import time

from producer import JobOptions, Producer
from producer.wire.keys import results_stream
from producer.wire.results import make_result, validate_result
from producer.wire.serializer import loads
from worker.store import Outcome
from worker.store.rq import RedisStore

from ..conftest import image_bytes, wait_for

STREAM = results_stream("classify")


def feed(conn) -> dict[str, dict]:
    entries = conn.xrange(STREAM)
    out = {}
    for _, fields in entries:
        result = validate_result(loads(fields[b"result"]))
        assert result["job_id"] == fields[b"job_id"].decode()
        out[result["job_id"]] = result
    assert len(out) == len(entries)  # one entry per final result
    return out


def test_every_final_result_is_fed_with_the_published_bytes(redis_url, conn):
    ids = Producer(redis_url, options=JobOptions(retries=1)).enqueue_many([image_bytes("cat.jpg")] * 3)
    conn.rpush("rq:queue:classify", "no-such-job")
    store = RedisStore(conn, "classify", "w1")
    store.register()
    pubsub = conn.pubsub()
    pubsub.subscribe("classify:results")
    jobs = store.take(8, 1.0)
    error = {"type": "unsupported_image", "message": "not an image"}
    ok = make_result(ids[0], model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    bad = make_result(ids[1], model="m@1", worker="w1", timings_ms={}, meta={}, error=error)
    retry = make_result(ids[2], model="m@1", worker="w1", timings_ms={}, meta={}, error=error)
    store.finish([Outcome(jobs[0], ok), Outcome(jobs[1], bad), Outcome(jobs[2], retry, retry=True)])
    fed = feed(conn)
    assert set(fed) == {ids[0], ids[1], "no-such-job"}  # the retried job is not final yet
    assert fed[ids[0]]["ok"] and fed[ids[1]]["error"]["type"] == "unsupported_image"
    assert fed["no-such-job"]["error"]["type"] == "job_gone" and fed["no-such-job"]["worker"] == "w1"
    published = []

    def three_published() -> bool:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            published.append(message["data"])
        return len(published) >= 3

    wait_for(three_published, 10)
    stored = {fields[b"result"] for _, fields in conn.xrange(STREAM)}
    assert set(published) == stored  # the very same bytes on the channel and in the feed


def lost_once(conn, job_id: str) -> RedisStore:
    """A worker takes ``job_id`` and dies; the reaper it returns fails it as poison (one delivery allowed)."""
    victim, reaper = RedisStore(conn, "classify", "victim"), RedisStore(conn, "classify", "reaper", max_deliveries=1)
    victim.register()
    reaper.register()
    victim.take(1, 1.0)
    conn.delete("rq:worker:victim")  # it died
    return reaper


def test_poison_results_are_fed_by_the_reaper(redis_url, conn):
    (job_id,) = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")])
    assert lost_once(conn, job_id).reap() == ([], [job_id])
    poison = feed(conn)[job_id]
    assert poison["ok"] is False and poison["error"]["type"] == "poison" and poison["job_id"] == job_id


def test_a_poison_job_is_kept_as_long_as_its_own_failure_ttl_says(redis_url, conn):
    (job_id,) = Producer(redis_url, options=JobOptions(failure_ttl_s=600)).enqueue_many([b"x"])
    assert lost_once(conn, job_id).reap() == ([], [job_id])
    assert 590 < conn.ttl(f"rq:job:{job_id}") <= 600 and 590 < conn.ttl(f"rq:results:{job_id}") <= 600
    assert 590 < conn.zscore("rq:failed:classify", job_id) - time.time() <= 600


def test_the_feed_is_capped_and_zero_turns_it_off(redis_url, conn):
    ids = Producer(redis_url).enqueue_many([b"x"] * 300)
    store = RedisStore(conn, "classify", "w1", results_maxlen=100)
    store.register()
    for _ in range(3):
        jobs = store.take(100, 1.0)
        store.finish(
            [
                Outcome(j, make_result(j.job_id, model="m", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)]))
                for j in jobs
            ]
        )
    assert 100 <= conn.xlen(STREAM) < 300  # approximate trimming: about the cap, never all
    conn.delete(STREAM)
    off = RedisStore(conn, "classify", "w2", results_maxlen=0)
    off.register()
    Producer(redis_url).enqueue_many([b"y"])
    (job,) = off.take(1, 1.0)
    off.finish(
        [Outcome(job, make_result(job.job_id, model="m", worker="w2", timings_ms={}, meta={}, topk=[("a", 1.0)]))]
    )
    assert conn.xlen(STREAM) == 0 and len(ids) == 300
