"""Producer behaviour against a real Redis (no worker needed for these)."""

from __future__ import annotations

import asyncio

import pytest
from rq import Queue
from rq.job import Job

from producer import AsyncProducer, JobTimeout, Producer
from producer.drivers import AsyncDriver, SyncDriver
from producer.ops import Batch
from producer.wire.jobs import TASK_NAME
from producer.wire.serializer import MsgpackSerializer

from ..conftest import IMAGES, image_bytes, wait_for_workers


def test_jobs_are_msgpack_rq_jobs_for_the_classify_task_with_retry(redis_url, conn):
    job_id = Producer(redis_url).enqueue(IMAGES / "cat.jpg", meta={"ad": 7})
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    assert job.func_name == TASK_NAME and job.kwargs == {"image": image_bytes("cat.jpg"), "meta": {"ad": 7}}
    assert job.retries_left == 2 and job.origin == "classify"
    assert Queue("classify", connection=conn).job_ids == [job_id]


def test_a_caller_chosen_job_id_makes_enqueue_idempotent(redis_url, conn):
    producer = Producer(redis_url)
    assert producer.enqueue(b"one", job_id="ad-1") == "ad-1"
    assert producer.enqueue_many([b"two", b"three"], job_ids=["ad-1", None])[0] == "ad-1"
    queue = Queue("classify", connection=conn)
    assert queue.count == 2 and queue.job_ids[0] == "ad-1"
    assert Job.fetch("ad-1", connection=conn, serializer=MsgpackSerializer).kwargs["image"] == b"one"


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_two_producers_racing_on_one_caller_chosen_id_leave_one_job(redis_url, conn, flavour):
    # Producer A checks the id, then B creates it before A writes: A must keep B's job, not add a second.
    other = Producer(redis_url)

    def race(op) -> None:
        if isinstance(op, Batch) and not conn.exists(Job.key_for("ad-9")):  # A has just checked the id
            other.enqueue(b"B's photo", job_id="ad-9", meta={"by": "B"})

    class RacingSync(SyncDriver):
        def _perform(self, op, watching):
            reply = super()._perform(op, watching)
            race(op)
            return reply

    class RacingAsync(AsyncDriver):
        async def _perform(self, op, watching):
            reply = await super()._perform(op, watching)
            race(op)
            return reply

    if flavour == "sync":
        racer = Producer(redis_url)
        sent = RacingSync([racer.connection]).run(racer.core.enqueue(b"A's photo", job_id="ad-9", meta={"by": "A"}))
    else:

        async def go() -> str:
            racer = AsyncProducer(redis_url)
            driver = RacingAsync([racer.connection])
            try:
                return await driver.run(racer.core.enqueue(b"A's photo", job_id="ad-9", meta={"by": "A"}))
            finally:
                await racer.close()

        sent = asyncio.run(go())
    assert sent == "ad-9"
    assert Queue("classify", connection=conn).job_ids == ["ad-9"]
    job = Job.fetch("ad-9", connection=conn, serializer=MsgpackSerializer)
    assert job.kwargs == {"image": b"B's photo", "meta": {"by": "B"}}


def test_meta_over_the_limit_or_not_msgpack_is_refused_at_enqueue(redis_url, conn):
    from producer.wire.jobs import MAX_META_BYTES, ProtocolError

    producer = Producer(redis_url)
    with pytest.raises(ProtocolError, match="over the limit"):
        producer.enqueue(b"x", meta={"blob": "x" * MAX_META_BYTES})
    with pytest.raises(ProtocolError, match="msgpack"):
        producer.enqueue(b"x", meta={"when": object()})
    with pytest.raises(ProtocolError, match="map"):
        producer.enqueue(b"x", meta=[1, 2])
    assert conn.llen("rq:queue:classify") == 0


def test_result_times_out_clearly(redis_url):
    producer = Producer(redis_url)
    with pytest.raises(JobTimeout, match="no such job"):
        producer.result("never-enqueued", timeout=0.2)
    job_id = producer.enqueue(b"x")
    with pytest.raises(JobTimeout) as waited:
        producer.result(job_id, timeout=0.2)
    assert "no such job" not in str(waited.value)


def test_classify_enqueues_and_waits(redis_url, conn, start_worker):
    start_worker()
    wait_for_workers(conn)
    result = Producer(redis_url).classify(IMAGES / "coffee.jpg", timeout=60, meta={"k": 1})
    assert result["ok"] and result["meta"] == {"k": 1}
