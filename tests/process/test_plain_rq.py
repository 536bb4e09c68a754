"""worker.tasks.classify under a plain ``rq worker -w rq.SimpleWorker``: same results, one job at a time."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import subprocess
import sys
import threading

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from producer import JobFailed, Producer
from producer.wire.serializer import MsgpackSerializer
from producer.wire.serializer import loads as msgpack_loads

from ..conftest import ROOT, image_bytes, wait_for_workers

RQ_WORKER = [
    sys.executable,
    "-m",
    "rq.cli",
    "worker",
    "-w",
    "rq.SimpleWorker",
    "-S",
    "producer.serializer.MsgpackSerializer",
    "--job-class",
    "worker.store.rqjob.AllowListedJob",
    "--burst",
]


def run_plain_rq(redis_url: str, model: str, command: list[str] = RQ_WORKER, env: dict | None = None) -> None:
    env = {**os.environ, "WORKER_MODEL": model, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(
        [*command, "--url", redis_url, "classify"], cwd=ROOT, env=env, timeout=120, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("job_class", [True, False], ids=["allow-listed", "plain-rq-control"])
def test_the_plain_rq_path_runs_no_function_or_callback_outside_the_allow_list(
    redis_url, conn, tiny_model_path, tmp_path, job_class
):
    marker, imported = tmp_path / "pwned.txt", tmp_path / "callback-imported.txt"
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    evil = queue.enqueue("os.system", f"touch {marker}")
    good = Producer(redis_url).enqueue(image_bytes("cat.jpg"))
    conn.hset(Job.key_for(good), "success_callback_name", "tests.side_effect.callback")  # a plain hash field
    command = RQ_WORKER if job_class else [a for a in RQ_WORKER if "job" not in a.lower()]
    run_plain_rq(redis_url, str(tiny_model_path), command, env={"SIDE_EFFECT_FILE": str(imported)})
    assert marker.exists() != job_class and imported.exists() != job_class  # the control shows both can happen
    if job_class:
        with pytest.raises(JobFailed) as failed:
            Producer(redis_url).result(evil.id, timeout=5)
        assert failed.value.error["type"] == "forbidden_function"
        assert Producer(redis_url).result(good, timeout=5)["ok"]


class _Touch:
    """Unpickled, it creates ``path``: what a pickled meta could do to a worker that unpickles it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("job_class", [True, False], ids=["allow-listed", "plain-rq-control"])
def test_the_plain_rq_path_sends_no_webhook_repeats_nothing_and_unpickles_nothing_even_without_s(
    redis_url, conn, tiny_model_path, tmp_path, job_class
):
    hits: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marker = tmp_path / "unpickled.txt"
    job_id = Producer(redis_url).enqueue(image_bytes("cat.jpg"))
    hooks = [{"url": f"http://127.0.0.1:{server.server_port}/{s}", "job_status": s} for s in ("finished", "failed")]
    fields = {"webhooks": json.dumps(hooks), "repeats_left": "3", "meta": pickle.dumps(_Touch(str(marker)))}
    conn.hset(Job.key_for(job_id), mapping=fields)  # hash fields whoever may enqueue can write
    without_s = [a for a in RQ_WORKER if a not in ("-S", "producer.serializer.MsgpackSerializer")]
    command = without_s if job_class else [a for a in without_s if "job" not in a.lower()]
    try:
        run_plain_rq(redis_url, str(tiny_model_path), command)
    finally:
        server.shutdown()
    assert (hits == [] and not marker.exists()) == job_class  # the control shows both can happen
    if job_class:
        assert Producer(redis_url).result(job_id, timeout=5)["ok"]
        assert conn.xlen(f"rq:results:{job_id}") == 1 and conn.llen("rq:queue:classify") == 0  # ran once


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
    for a, b in zip(plain, batched, strict=True):
        assert a["ok"] and b["ok"] and a["meta"] == b["meta"] and a["model"] == b["model"]
        assert [label for label, _ in a["topk"]] == [label for label, _ in b["topk"]]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a["topk"], b["topk"], strict=True)) <= 1e-5


def test_the_plain_rq_path_reads_the_same_settings_as_the_batch_worker(redis_url, tiny_model_path):
    """WORKER_MAX_PIXELS (and every other environment twin) applies under a plain rq worker too."""
    producer = Producer(redis_url)
    small, large = producer.enqueue(image_bytes("cat.jpg")), producer.enqueue(image_bytes("odd_panorama.jpg"))
    run_plain_rq(redis_url, str(tiny_model_path), env={"WORKER_MAX_PIXELS": "200000", "WORKER_TOPK": "2"})
    assert len(producer.result(small, timeout=5)["topk"]) == 2
    with pytest.raises(JobFailed) as failed:
        producer.result(large, timeout=5)
    assert failed.value.error["type"] == "image_too_large"


def test_a_retryable_failure_is_published_once_when_its_retries_are_used_up(redis_url, conn, tiny_model_path):
    from bench.devserver import free_port
    from producer import JobOptions

    port = free_port()  # nothing listens: every fetch fails, retryably (fetch_error)
    producer = Producer(redis_url, options=JobOptions(retries=2))
    channel = conn.pubsub(ignore_subscribe_messages=True)
    channel.subscribe("classify:results")
    channel.get_message(timeout=5.0, ignore_subscribe_messages=False)
    job_id = producer.enqueue(image_url=f"http://127.0.0.1:{port}/a.jpg")
    run_plain_rq(redis_url, str(tiny_model_path), env={"WORKER_FETCH_ALLOW": f"http://127.0.0.1:{port}/"})
    with pytest.raises(JobFailed) as failed:
        producer.result(job_id, timeout=5)
    assert failed.value.error["type"] == "fetch_error"
    published = []
    while (message := channel.get_message(timeout=0.5)) is not None:
        published.append(msgpack_loads(message["data"]))
    assert [r["job_id"] for r in published] == [job_id]  # the last try's failure only, not one per try
    assert Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).retries_left == 0  # all three tries ran
