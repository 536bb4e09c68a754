"""Hostile input against a real worker: every bad job answered ok: false with a clear type, once; mates succeed."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import threading
import time
import zlib

import pytest
import redis
import torch
from PIL import Image
from rq import Queue
from rq.job import Job, JobStatus

from producer import JobFailed, JobOptions, Producer, QueueFull
from producer.wire.serializer import MsgpackSerializer
from worker.decode.cpu import Limits
from worker.decode.pool import ThreadDecoder
from worker.infer import Predictor
from worker.model import load_model
from worker.pipeline import Pipeline, PipelineSettings
from worker.store.rq import RedisStore

from ..conftest import ROOT, all_images, image_bytes, wait_for


def png(size: tuple[int, int], mode: str = "1") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def multipage_tiff() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
ZERO_PNG = png((1, 1)).replace(b"\x00\x00\x00\x01\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00\x00\x00", 1)

IMAGES = {  # name: (image bytes, expected error type)
    "empty": (b"", "unsupported_image"),
    "random": (os.urandom(4096), "unsupported_image"),
    "truncated-jpeg": (image_bytes("coffee.jpg")[:3000], "unsupported_image"),
    "header-then-garbage": (image_bytes("coffee.jpg")[:600] + os.urandom(8000), "unsupported_image"),
    "bomb": (png((30000, 30000)), "image_too_large"),
    "over-max-bytes": (os.urandom(10) + image_bytes("retina_large.jpg"), "image_too_large"),
    "svg": (SVG, "unsupported_image"),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "unsupported_image"),
    "multipage-tiff": (multipage_tiff(), "unsupported_image"),
    "zero-size": (ZERO_PNG, "unsupported_image"),
}


def raw_job(conn, queue: Queue, job_id: str, data: bytes) -> None:
    """A job hash with arbitrary (compressed) data, queued like RQ queues it."""
    conn.hset(
        Job.key_for(job_id),
        mapping={
            "data": zlib.compress(data),
            "status": "queued",
            "origin": queue.name,
            "created_at": "2026-01-01T00:00:00.000000Z",
        },
    )
    conn.rpush(queue.key, job_id)


def test_every_hostile_job_is_answered_and_its_batch_mates_succeed(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    good = producer.enqueue_many([image_bytes("cat.jpg")] * 3)
    expected = {producer.enqueue(data): kind for data, kind in IMAGES.values()}
    for kwargs, kind in [
        ({"image": "a string, not bytes", "meta": {}}, "bad_request"),
        ({"meta": {}}, "bad_request"),
        ({"image": b"x", "meta": {}, "extra": 1}, "bad_request"),
        ({"image": b"x", "meta": [1, 2]}, "bad_request"),
        ({"image": b"x", "meta": {"blob": "x" * 20000}}, "bad_request"),
        ({"image": b"x", "deadline": "soon"}, "bad_request"),
    ]:
        expected[queue.enqueue("worker.tasks.classify", kwargs=kwargs).id] = kind
    expected[queue.enqueue("os.system", "touch /tmp/should-never-exist").id] = "forbidden_function"
    raw_job(conn, queue, "not-msgpack", b"\xc1\xc1 definitely not msgpack")
    raw_job(conn, queue, "a-pickle", pickle.dumps(("os.system", None, ("id",), {})))
    expected.update({"not-msgpack": "bad_job_data", "a-pickle": "bad_job_data"})
    conn.rpush(queue.key, "hash-is-gone")
    conn.set(Job.key_for("a-string-key"), "not a hash")
    conn.rpush(queue.key, "a-string-key", b"\xff\xfe not UTF-8")  # the first is answered job_gone
    conn.hset(Job.key_for("no-data"), mapping={"status": "queued", "lost_deliveries": "many"})
    conn.rpush(queue.key, "no-data")
    expected["no-data"] = "bad_job_data"
    with producer.subscribe() as sub:
        proc = start_worker("--batch-size", "32", "--max-image-bytes", "200000", "--max-wait-ms", "200")
        seen = {}
        while len(seen) < len(expected) + len(good) + 2:
            message = sub.get(timeout=60)
            assert message is not None, f"unanswered: {set(expected) - set(seen)}"
            seen[message["job_id"]] = message
    assert seen["hash-is-gone"]["error"]["type"] == seen["a-string-key"]["error"]["type"] == "job_gone"
    for job_id in good:
        assert seen[job_id]["ok"]
    for job_id, kind in expected.items():
        assert seen[job_id]["ok"] is False and seen[job_id]["error"]["type"] == kind, (job_id, seen[job_id]["error"])
        assert seen[job_id]["error"]["message"]
        job = Job(job_id, connection=conn, serializer=MsgpackSerializer)
        assert conn.hget(job.key, "status") == b"failed"  # deterministic: never retried
        assert queue.failed_job_registry.get_job_ids().count(job_id) == 1
    assert not os.path.exists("/tmp/should-never-exist")
    assert proc.poll() is None and len(queue) == 0


def test_producer_refuses_past_the_queue_limit(redis_url, conn):
    producer = Producer(redis_url, options=JobOptions(max_queue_length=5))
    producer.enqueue_many([b"img"] * 4)
    producer.enqueue(b"img")
    with pytest.raises(QueueFull) as full:
        producer.enqueue(b"img")
    assert full.value.length == 5 and full.value.limit == 5 and "full" in str(full.value)
    with pytest.raises(QueueFull):
        Producer(redis_url, options=JobOptions(max_queue_length=6)).enqueue_many([b"img"] * 2)
    assert len(Queue("classify", connection=conn)) == 5


def test_an_expired_job_is_answered_without_compute(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    late = producer.enqueue(image_bytes("cat.jpg"), deadline_s=0.01)
    fine = producer.enqueue(image_bytes("cat.jpg"), deadline_s=300)
    time.sleep(0.05)  # the deadline is in the past before any worker exists (not a race: nothing polls)
    with producer.subscribe() as sub:
        start_worker()
        messages = {m["job_id"]: m for m in (sub.get(timeout=60) for _ in range(2)) if m}
    with pytest.raises(JobFailed) as failed:
        producer.result(late, timeout=60)
    assert failed.value.error["type"] == "expired"
    assert messages[late]["timings_ms"]["infer"] == 0.0 and messages[late]["timings_ms"]["decode"] < 50
    assert producer.result(fine, timeout=60)["ok"] and messages[fine]["ok"]


class OomAbove(torch.nn.Module):
    """A CPU stand-in for a GPU running out of memory: raises torch's OutOfMemoryError above ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated above batch {self.limit})")
        return self.inner(x)


class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward exploded")


def serve_in_process(redis_url: str, tiny_model_path, wrap, batch: int = 8):
    """Our pipeline on the real Redis store, in this process, until the queue is empty."""
    model = load_model(tiny_model_path, max_batch=batch)
    model.module = wrap(model.module)
    store = RedisStore(redis.Redis.from_url(redis_url), "classify", "t:cpu:1")
    store.register()
    predictor = Predictor(model, batch)
    settings = PipelineSettings("t:cpu:1", max_wait_ms=200, idle_wait_ms=100, burst=True)
    Pipeline(store, ThreadDecoder(model.info.preprocess, Limits(), 2), predictor, settings, threading.Event()).run()
    return predictor, model


def test_out_of_memory_splits_the_batch_and_lowers_the_cap(redis_url, conn, tiny_model_path, caplog):
    photos = [p.read_bytes() for p in all_images() if p.suffix == ".jpg"][:8]  # distinct: a repeat runs once
    ids = Producer(redis_url).enqueue_many(photos)
    predictor, model = serve_in_process(redis_url, tiny_model_path, lambda m: OomAbove(m, 2))
    assert predictor.cap == 2 and max(model.buckets) == 2
    assert "batch cap lowered to" in caplog.text
    for job_id in ids:
        assert Producer(redis_url).result(job_id, timeout=5)["ok"]


def test_a_model_error_is_retried_then_failed_clearly(redis_url, conn, tiny_model_path):
    (job_id,) = Producer(redis_url, options=JobOptions(retries=2)).enqueue_many([image_bytes("cat.jpg")])
    serve_in_process(redis_url, tiny_model_path, lambda m: Broken())
    with pytest.raises(JobFailed) as failed:
        Producer(redis_url).result(job_id, timeout=5)
    assert failed.value.error["type"] == "model_error" and "forward exploded" in failed.value.error["message"]
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0
    assert [r.type.name for r in job.results()] == ["FAILED"]  # the two retries wrote no final result


def test_ids_are_logged_escaped_so_a_queued_id_cannot_forge_a_log_line(redis_url, conn, tiny_model_path, tmp_path):
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    conn.rpush(queue.key, "gone\nERROR forged by a queued id")  # no job hash: answered job_gone, and logged
    raw_job(conn, queue, "bad\r\nERROR \x1b[31mforged too", b"not msgpack")  # fails bad_job_data, logged
    log = tmp_path / "worker.log"
    args = [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", redis_url]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stderr=out)
    try:
        wait_for(lambda: conn.hget(Job.key_for("bad\r\nERROR \x1b[31mforged too"), "status") == b"failed", 60)
        wait_for(lambda: "job_gone" in log.read_text(), 30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "gone\\nERROR forged by a queued id" in text and "bad\\r\\nERROR \\x1b[31mforged too" in text
    forged = [line for line in text.splitlines() if "forged" in line and "\\nERROR" not in line]
    assert forged == [] and "\x1b" not in text
