"""A real worker process, a real Redis: jobs in through Producer or plain RQ, results out."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from producer import JobFailed, Producer
from producer.wire.results import RESULT_KEYS
from producer.wire.serializer import MsgpackSerializer

from ..conftest import all_images, image_bytes, wait_for_workers


def test_producer_jobs_are_classified_and_readable_through_rq(redis_url, conn, start_worker):
    start_worker("--batch-size", "4", "--max-wait-ms", "20")
    wait_for_workers(conn)
    producer = Producer(redis_url)
    paths = all_images()
    ids = producer.enqueue_many(paths, metas=[{"name": p.name} for p in paths])
    for job_id, path in zip(ids, paths, strict=True):
        result = producer.result(job_id, timeout=60)
        assert set(RESULT_KEYS) <= set(result)
        assert result["ok"] and result["error"] is None
        assert result["job_id"] == job_id and result["meta"] == {"name": path.name}
        assert result["model"] == "tiny@7" and result["label"].startswith("class")
        assert len(result["topk"]) == 5 and result["topk"][0] == [result["label"], result["score"]]
        scores = [s for _, s in result["topk"]]
        assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
        assert 0.0 < sum(scores) <= 1.0 + 1e-6
        job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value() == result
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    assert queue.finished_job_registry.count == len(paths)
    assert queue.started_job_registry.count == 0 and conn.llen(queue.intermediate_queue_key) == 0


def test_plain_rq_enqueue_is_served(redis_url, conn, start_worker):
    start_worker()
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    # RQ reads a top-level meta= as its own job meta, so the job's arguments go in kwargs=.
    job = queue.enqueue("worker.tasks.classify", kwargs={"image": image_bytes("coffee.jpg"), "meta": {"ad": 42}})
    result = Producer(redis_url).result(job.id, timeout=60)
    assert result["ok"] and result["meta"] == {"ad": 42}
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def test_results_are_published_on_the_channel(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    with producer.subscribe() as sub:
        start_worker("--batch-size", "8")
        ids = producer.enqueue_many([image_bytes("cat.jpg")] * 5 + [b"not an image"])
        seen = {}
        while len(seen) < len(ids):
            message = sub.get(timeout=60)
            assert message is not None, f"only {len(seen)} of {len(ids)} results were published"
            seen[message["job_id"]] = message
    assert set(seen) == set(ids)
    assert [seen[i]["ok"] for i in ids] == [True] * 5 + [False]
    assert seen[ids[-1]]["error"]["type"] == "unsupported_image"


def test_corrupt_image_fails_alone_and_clearly(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    good = image_bytes("coffee.jpg")
    ids = producer.enqueue_many([good, good[: len(good) // 3], good, b"", good])
    start_worker("--batch-size", "8", "--max-wait-ms", "200")
    outcomes = []
    for job_id in ids:
        try:
            outcomes.append(producer.result(job_id, timeout=60)["ok"])
        except JobFailed as exc:
            outcomes.append(exc.error["type"])
    assert outcomes == [True, "unsupported_image", True, "unsupported_image", True]
    failed = Job.fetch(ids[1], connection=conn, serializer=MsgpackSerializer)
    assert failed.get_status() == JobStatus.FAILED
    assert "unsupported_image" in failed.latest_result().exc_string
    job = Job.fetch(ids[1], connection=conn, serializer=MsgpackSerializer)
    assert job.retries_left == 0 and len(job.results()) == 1  # deterministic: not retried (as plain rq records it)


def test_function_outside_the_allow_list_is_refused_and_never_run(redis_url, conn, start_worker, tmp_path):
    marker = tmp_path / "pwned"
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    evil = queue.enqueue("os.system", f"touch {marker}")
    good = Producer(redis_url).enqueue(image_bytes("cat.jpg"))
    start_worker()
    assert Producer(redis_url).result(good, timeout=60)["ok"]
    with pytest.raises(JobFailed) as failed:
        Producer(redis_url).result(evil.id, timeout=10)
    assert failed.value.error["type"] == "forbidden_function"
    assert "os.system" in failed.value.error["message"]
    assert not marker.exists()


def test_rq_info_shows_the_queue_and_the_batch_worker(redis_url, conn, start_worker):
    import subprocess
    import sys

    from rq import Worker

    from ..conftest import ROOT

    Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 3)
    start_worker("--name", "host-a:cpu:1")
    wait_for_workers(conn)
    assert [w.name for w in Worker.all(connection=conn)] == ["host-a:cpu:1"]
    info = subprocess.run(
        [sys.executable, "-m", "rq.cli", "info", "-S", "producer.serializer.MsgpackSerializer", "--url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode == 0, info.stderr
    assert "classify" in info.stdout and "host-a:cpu:1" in info.stdout


def test_sigterm_stops_the_worker_cleanly_and_unregisters_it(redis_url, conn, start_worker):
    import signal

    from rq import Worker

    proc = start_worker()
    wait_for_workers(conn)
    assert Producer(redis_url).classify(image_bytes("cat.jpg"), timeout=60)["ok"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert Worker.all(connection=conn) == []
