"""worker.tasks.classify under a plain ``rq worker -w rq.SimpleWorker``: same results, one job at a time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rq.job import Job, JobStatus

from producer import JobFailed, Producer
from producer.serializer import MsgpackSerializer

from ..conftest import ROOT, image_bytes, wait_for_workers

RQ_WORKER = [sys.executable, "-m", "rq.cli", "worker", "-w", "rq.SimpleWorker", "-S",
             "producer.serializer.MsgpackSerializer", "--burst"]  # fmt: skip


def run_plain_rq(redis_url: str, model: str) -> None:
    env = {**os.environ, "WORKER_MODEL": model, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*RQ_WORKER, "--url", redis_url, "classify"], cwd=ROOT, env=env, timeout=120,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_plain_rq_worker_gives_the_same_results_as_the_batch_worker(redis_url, conn, start_worker, tiny_model_path):
    producer = Producer(redis_url)
    names = ["coffee.jpg", "cat.jpg", "odd_rgba.png"]
    plain_ids = producer.enqueue_many([image_bytes(n) for n in names], metas=[{"n": n} for n in names])
    bad_id = producer.enqueue(b"definitely not an image")
    run_plain_rq(redis_url, str(tiny_model_path))
    plain = [producer.result(i, timeout=5) for i in plain_ids]
    with pytest.raises(JobFailed) as failed:
        producer.result(bad_id, timeout=5)
    assert failed.value.error["type"] == "unsupported_image"
    bad = Job.fetch(bad_id, connection=conn, serializer=MsgpackSerializer)
    assert bad.get_status() == JobStatus.FAILED and bad.retries_left == 0  # deterministic: not retried

    start_worker("--batch-size", "4")
    wait_for_workers(conn)
    batch_ids = producer.enqueue_many([image_bytes(n) for n in names], metas=[{"n": n} for n in names])
    batched = [producer.result(i, timeout=60) for i in batch_ids]
    for a, b in zip(plain, batched):
        assert a["ok"] and b["ok"] and a["meta"] == b["meta"] and a["model"] == b["model"]
        assert [label for label, _ in a["topk"]] == [label for label, _ in b["topk"]]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a["topk"], b["topk"])) <= 1e-5
