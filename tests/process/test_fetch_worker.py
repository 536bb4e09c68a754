"""Jobs by reference end to end: a real worker fetching from a real local HTTP server, beside jobs with bytes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from rq.job import Job

from producer import ImageRef, JobFailed, JobOptions, Producer
from producer.aio import AsyncProducer
from producer.wire.serializer import MsgpackSerializer

from ..conftest import IMAGES, ROOT, image_bytes, wait_for_workers
from ..imageserver import ImageServer


@pytest.fixture
def server() -> Iterator[ImageServer]:
    server = ImageServer(IMAGES).start()
    yield server
    server.stop()


def outcome(producer: Producer, job_id: str) -> dict | str:
    """The result, or the failure's type."""
    try:
        return producer.result(job_id, timeout=60)
    except JobFailed as exc:
        return exc.error["type"]


def test_url_jobs_and_byte_jobs_are_classified_together_in_one_batch(redis_url, conn, start_worker, server):
    producer = Producer(redis_url)
    images = [
        image_bytes("cat.jpg"),
        ImageRef(server.url("/img/cat.jpg")),
        image_bytes("coffee.jpg"),
        ImageRef(server.url("/img/coffee.jpg")),
        IMAGES / "flower.jpg",
    ]
    ids = producer.enqueue_many(images, metas=[{"i": i} for i in range(len(images))])
    data = conn.hget(Job.key_for(ids[1]), "data")
    assert len(data) < 300 and b"image_url" in data  # a reference, not the image
    start_worker("--fetch-allow", f"http://127.0.0.1:{server.port}/", "--batch-size", "8", "--max-wait-ms", "1000")
    results = [producer.result(job_id, timeout=60) for job_id in ids]
    assert all(r["ok"] for r in results) and [r["meta"] for r in results] == [{"i": i} for i in range(5)]
    assert [r["batch"] for r in results] == [5] * 5  # taken together, fetched while the others decoded
    assert results[1]["topk"] == results[0]["topk"] and results[3]["topk"] == results[2]["topk"]
    assert server.hits["/img/cat.jpg"] == server.hits["/img/coffee.jpg"] == 1


def test_fetch_failures_are_retried_only_when_a_retry_can_help(redis_url, conn, start_worker, server):
    start_worker(
        "--fetch-allow",
        f"http://127.0.0.1:{server.port}/img/,http://127.0.0.1:{server.port}/slow.jpg,"
        f"http://127.0.0.1:{server.port}/missing.jpg,http://127.0.0.1:{server.port}/redirect",
        "--fetch-read-timeout-s",
        "0.5",
        "--fetch-timeout-s",
        "1",
    )
    wait_for_workers(conn)
    producer = Producer(redis_url, options=JobOptions(retries=1))
    urls = {
        "slow": server.url("/slow.jpg"),
        "missing": server.url("/missing.jpg"),
        "not listed": server.url("/page.html"),
        "redirected out": server.url("/redirect?to=/page.html"),
        "fine": server.url("/img/cat.jpg"),
    }
    ids = producer.enqueue_many(image_urls=list(urls.values()))
    got = dict(zip(urls, (outcome(producer, job_id) for job_id in ids), strict=True))
    assert got["slow"] == "fetch_error" and server.hits["/slow.jpg"] == 2  # the first try and one retry
    assert got["missing"] == "fetch_failed" and server.hits["/missing.jpg"] == 1  # deterministic: not retried
    assert got["not listed"] == got["redirected out"] == "forbidden_url" and server.hits["/page.html"] == 0
    assert got["fine"]["ok"] and got["fine"]["label"].startswith("class")


def test_a_worker_without_an_allow_list_refuses_url_jobs(redis_url, conn, start_worker, server):
    producer = Producer(redis_url)
    job_id = producer.enqueue(image_url=server.url("/img/cat.jpg"))
    start_worker()
    assert outcome(producer, job_id) == "forbidden_url" and server.hits["/img/cat.jpg"] == 0


def test_push_url_and_the_async_producer_enqueue_jobs_by_reference(redis_url, conn, start_worker, server):
    url = server.url("/img/coffee.jpg")

    async def enqueue() -> str:
        producer = AsyncProducer(redis_url)
        try:
            return await producer.enqueue(image_url=url, meta={"a": 1})
        finally:
            await producer.close()

    job = Job.fetch(asyncio.run(enqueue()), connection=conn, serializer=MsgpackSerializer)
    assert job.kwargs == {"image_url": url, "meta": {"a": 1}} and job.description == f"classify {url}"
    start_worker("--fetch-allow", f"http://127.0.0.1:{server.port}/img/")
    pushed = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer",
            "--redis-url",
            redis_url,
            "push",
            "--wait",
            str(IMAGES / "cat.jpg"),
            "--url",
            url,
            server.url("/img/missing.jpg"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = pushed.stdout.strip().splitlines()
    assert pushed.returncode == 1, pushed.stderr
    assert lines[0].startswith("cat.jpg") and lines[1].startswith(url) and "class" in lines[1]
    assert "FAILED fetch_failed" in lines[2] and "3 sent, 2 ok, 1 failed" in lines[-1]
    bad = subprocess.run(
        [sys.executable, "-m", "producer", "--redis-url", redis_url, "push", "--url", "ftp://x/a"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "push: --url" in bad.stderr


def test_the_plain_rq_path_fetches_under_the_same_policy(redis_url, conn, tiny_model_path, server):
    from .test_plain_rq import run_plain_rq

    producer = Producer(redis_url)
    ok, missing, other = (producer.enqueue(image_url=server.url(p)) for p in ("/img/cat.jpg", "/img/nope.jpg", "/x"))
    run_plain_rq(redis_url, str(tiny_model_path), env={"WORKER_FETCH_ALLOW": f"http://127.0.0.1:{server.port}/img/"})
    assert producer.result(ok, timeout=5)["ok"]
    assert outcome(producer, missing) == "fetch_failed" and outcome(producer, other) == "forbidden_url"
    assert server.hits["/img/nope.jpg"] == 1 and server.hits["/x"] == 0
