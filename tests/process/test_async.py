"""AsyncProducer against a real Redis and worker, and the aiohttp example endpoint."""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from producer import JobFailed, JobOptions, Producer, QueueFull
from producer.aio import AsyncProducer
from producer.wire.serializer import MsgpackSerializer

from ..conftest import ROOT, image_bytes, wait_for_workers


def test_async_jobs_are_rq_jobs_like_the_sync_ones(redis_url, conn):
    async def go() -> list[str]:
        producer = AsyncProducer(redis_url)
        try:
            return await producer.enqueue_many([image_bytes("cat.jpg")] * 2, metas=[{"n": 1}, None])
        finally:
            await producer.close()

    ids = asyncio.run(go())
    (sync_id,) = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")], metas=[{"n": 1}])
    assert Queue("classify", connection=conn).get_job_ids() == [*ids, sync_id]
    ours, theirs = (Job.fetch(i, connection=conn, serializer=MsgpackSerializer) for i in (ids[0], sync_id))
    assert set(conn.hkeys(ours.key)) == set(conn.hkeys(theirs.key))
    assert ours.kwargs == theirs.kwargs and ours.get_status() == JobStatus.QUEUED and ours.retries_left == 2


def test_async_classify_result_subscribe_and_queue_full(redis_url, conn, start_worker):
    start_worker()
    wait_for_workers(conn)

    async def go() -> None:
        producer = AsyncProducer(redis_url)
        try:
            stream = producer.subscribe()
            first = asyncio.ensure_future(stream.__anext__())
            deadline = time.monotonic() + 10
            while conn.pubsub_numsub("classify:results")[0][1] == 0:  # the subscription is live on the server
                assert time.monotonic() < deadline, "the subscription never started"
                await asyncio.sleep(0.005)
            result = await producer.classify(image_bytes("cat.jpg"), timeout=60, meta={"ad": 7})
            assert result["ok"] and result["meta"] == {"ad": 7}
            assert (await asyncio.wait_for(first, 30))["job_id"] == result["job_id"]
            await stream.aclose()
            bad = await producer.enqueue(b"not an image")
            with pytest.raises(JobFailed) as failed:
                await producer.result(bad, timeout=60)
            assert failed.value.error["type"] == "unsupported_image"
            results = await asyncio.gather(
                *(producer.classify(image_bytes("coffee.jpg"), timeout=60) for _ in range(5))
            )
            assert len({r["job_id"] for r in results}) == 5 and all(r["ok"] for r in results)
        finally:
            await producer.close()
        full = AsyncProducer(redis_url, options=JobOptions(max_queue_length=0))
        with pytest.raises(QueueFull):
            await full.enqueue(b"x")
        await full.close()

    asyncio.run(go())


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None, reason="the web extra (aiohttp) is not installed")
def test_example_web_endpoint(redis_url, conn, start_worker):
    from aiohttp.test_utils import TestClient, TestServer

    spec = importlib.util.spec_from_file_location("async_web", ROOT / "examples" / "async_web.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start_worker()
    wait_for_workers(conn)

    async def go() -> None:
        async with TestClient(TestServer(module.make_app(redis_url))) as client:
            response = await client.post("/classify", data=image_bytes("cat.jpg"))
            body = await response.json()
            assert response.status == 200 and body["label"] and len(body["topk"]) == 5
            response = await client.post("/classify", data=b"junk bytes")
            assert response.status == 422 and (await response.json())["error"]["type"] == "unsupported_image"
            assert (await client.post("/classify", data=b"")).status == 400

    asyncio.run(go())
