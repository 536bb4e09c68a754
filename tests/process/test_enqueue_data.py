"""The producer stores job data uncompressed (RQ's zlib bought nothing on JPEG bytes), still as RQ reads it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import zlib

import pytest
from rq import Queue
from rq.job import Job

from producer import JobOptions, Producer
from producer.aio import AsyncProducer
from producer.wire.jobs import TASK_NAME
from producer.wire.serializer import MsgpackSerializer, dumps

from ..conftest import ROOT, image_bytes, wait_for_workers

# RQ writes these itself at enqueue; they differ between any two jobs
PER_JOB_FIELDS = {b"created_at", b"enqueued_at", b"data"}


def raw_data(conn, job_id: str) -> bytes:
    return conn.hget(Job.key_for(job_id), "data")


def test_job_data_is_the_msgpack_call_uncompressed_and_rq_reads_it(redis_url, conn):
    photo = image_bytes("cat.jpg")
    job_id = Producer(redis_url).enqueue(photo, meta={"ad": 1})
    call = [TASK_NAME, None, [], {"image": photo, "meta": {"ad": 1}}]
    assert raw_data(conn, job_id) == dumps(call)
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)  # RQ's own class, not ours
    assert job.func_name == TASK_NAME and job.kwargs == {"image": photo, "meta": {"ad": 1}}


def test_plain_call_data_can_never_be_mistaken_for_zlib():
    # RQ's restore tries zlib first: a msgpack call starts 0x94 (array of 4), compression method 4, not deflate
    for image in (b"", b"x", image_bytes("cat.jpg")):
        data = dumps([TASK_NAME, None, [], {"image": image, "meta": {}}])
        assert data[0] == 0x94
        with pytest.raises(zlib.error):
            zlib.decompress(data)


def test_enqueue_many_writes_what_rq_writes_except_that_data_is_not_compressed(redis_url, conn):
    photos = [image_bytes("cat.jpg"), image_bytes("coffee.jpg")]
    metas = [{"n": 1}, {"n": 2}]
    ours = Producer(redis_url).enqueue_many(photos, job_ids=["p1", "p2"], metas=metas)
    rqs = Producer(redis_url, options=JobOptions(compress_data=True)).enqueue_many(
        photos, job_ids=["z1", "z2"], metas=metas
    )
    for plain_id, zlib_id in zip(ours, rqs, strict=True):
        plain, packed = conn.hgetall(Job.key_for(plain_id)), conn.hgetall(Job.key_for(zlib_id))
        assert plain.keys() == packed.keys()
        assert {k: v for k, v in plain.items() if k not in PER_JOB_FIELDS} == {
            k: v for k, v in packed.items() if k not in PER_JOB_FIELDS
        }
        assert plain[b"data"] == zlib.decompress(packed[b"data"])
        assert conn.ttl(Job.key_for(plain_id)) == conn.ttl(Job.key_for(zlib_id))
    assert [i.decode() for i in conn.lrange("rq:queue:classify", 0, -1)] == ["p1", "p2", "z1", "z2"]


def test_the_async_producer_writes_plain_data_too(redis_url, conn):
    async def enqueue() -> str:
        producer = AsyncProducer(redis_url)
        try:
            return await producer.enqueue(image_bytes("cat.jpg"), meta={"a": 1})
        finally:
            await producer.close()

    job_id = asyncio.run(enqueue())
    assert raw_data(conn, job_id) == dumps([TASK_NAME, None, [], {"image": image_bytes("cat.jpg"), "meta": {"a": 1}}])
    assert Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).kwargs["meta"] == {"a": 1}


def test_rq_info_and_rq_queue_api_list_plain_data_jobs(redis_url, conn):
    job_id = Producer(redis_url).enqueue(image_bytes("cat.jpg"))
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "info",
            "--url",
            redis_url,
            "-S",
            "producer.serializer.MsgpackSerializer",
            "classify",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "1 jobs total" in shown.stdout
    (job,) = Queue("classify", connection=conn, serializer=MsgpackSerializer).jobs  # fetch_many: RQ's restore
    assert job.id == job_id and job.kwargs["image"] == image_bytes("cat.jpg")


def test_the_worker_classifies_plain_and_zlib_jobs_alike(redis_url, conn, start_worker):
    start_worker("--batch-size", "4", "--max-wait-ms", "20")
    wait_for_workers(conn)
    photo = image_bytes("coffee.jpg")
    plain = Producer(redis_url)
    packed = Producer(redis_url, options=JobOptions(compress_data=True))
    ids = [plain.enqueue(photo, meta={"k": "plain"}), packed.enqueue(photo, meta={"k": "zlib"})]
    assert raw_data(conn, ids[0])[0] == 0x94 and raw_data(conn, ids[1])[0] == 0x78  # plain msgpack, zlib header
    first, second = (plain.result(i, timeout=60) for i in ids)
    assert first["ok"] and second["ok"] and first["meta"] == {"k": "plain"} and second["meta"] == {"k": "zlib"}
    assert (first["label"], first["topk"]) == (second["label"], second["topk"])
