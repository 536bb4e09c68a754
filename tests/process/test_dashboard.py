"""``python -m producer dashboard`` (rq-dashboard set up for msgpack) against a real worker and Redis:
its JSON endpoints answer for a finished job, a failed job and a busy worker, and never show image bytes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import redis
from rq import Queue

from bench.devserver import free_port
from producer import JobFailed, Producer
from producer.wire.serializer import MsgpackSerializer

from ..acls import drop_users, set_users
from ..conftest import ROOT, image_bytes, wait_for, wait_for_workers

pytest.importorskip("rq_dashboard", reason="rq-dashboard is not installed (pip install -e '.[dashboard]')")


def get(base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(base + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def post(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    return get(base, path, headers, method="POST")


@pytest.fixture
def start_dashboard(redis_url: str) -> Iterator[Callable[..., str]]:
    """Starts ``python -m producer dashboard`` on a free port; returns its base URL once it answers."""
    procs: list[subprocess.Popen] = []

    def start(*extra: str, env: dict[str, str] | None = None, ready_status: int = 200) -> str:
        port = free_port()
        args = [sys.executable, "-m", "producer", "dashboard", "--redis-url", redis_url, "--port", str(port), *extra]
        env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base, "/")[0] == ready_status or proc.poll() is not None, 30)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return base

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def dashboard(start_dashboard: Callable[..., str]) -> str:
    """The dashboard (with --show-full-args: the page most likely to show bytes) on a free port."""
    return start_dashboard("--show-full-args")


def test_dashboard_shows_finished_and_failed_jobs_with_results_and_no_image_bytes(
    redis_url, conn, start_worker, dashboard
):
    start_worker()
    wait_for_workers(conn)
    producer = Producer(redis_url)
    ok = producer.enqueue(image_bytes("cat.jpg"), meta={"ad_id": 42, "title": "<img src=x onerror=alert(1)>"})
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    coffee = {"image": image_bytes("coffee.jpg"), "meta": {}}
    plain = queue.enqueue("worker.tasks.classify", kwargs=coffee)  # RQ's own description
    bad = producer.enqueue(b"not an image")
    producer.result(ok, timeout=60)
    producer.result(plain.id, timeout=60)
    with pytest.raises(JobFailed):
        producer.result(bad, timeout=60)

    status, body = get(dashboard, "/0/data/jobs/classify/finished/8/asc/1.json")
    assert status == 200 and ok in body and plain.id in body
    status, body = get(dashboard, f"/0/data/job/{ok}.json")
    job = json.loads(body)
    assert status == 200 and job["status"] == "finished" and job["result"]["ok"] is True
    assert job["result"]["label"].startswith("class") and "<img" not in body  # pages insert it as HTML
    assert job["result"]["meta"] == {"ad_id": 42, "title": "&lt;img src=x onerror=alert(1)&gt;"}
    conn.sadd("rq:queues", "rq:queue:<b onmouseover=alert(1)>x</b>")  # any user that may enqueue may SADD
    status, body = get(dashboard, "/0/data/queues.json")
    assert status == 200 and "&lt;b onmouseover=alert(1)&gt;x&lt;/b&gt;" in body and "<b" not in body
    status, body = get(dashboard, "/0/data/jobs/classify/failed/8/asc/1.json")
    assert status == 200 and bad in body and "unsupported_image" in body
    status, body = get(dashboard, f"/0/data/job/{bad}.json")
    assert status == 200 and json.loads(body)["status"] == "failed" and "unsupported_image" in body
    status, body = get(dashboard, f"/0/data/job/{plain.id}.json")
    assert status == 200 and "\\x" not in body  # RQ's own description is b'\xff\xd8...' (truncated)
    assert json.loads(body)["description"].startswith("worker.tasks.classify(")


def test_dashboard_lists_a_busy_worker_and_its_current_job_without_image_bytes(
    redis_url, conn, start_worker, dashboard
):
    start_worker("--batch-size", "1", "--name", "dash-host:cpu:7")
    wait_for_workers(conn)
    producer = Producer(redis_url)
    producer.enqueue_many([image_bytes("cat.jpg")] * 1500)  # keeps it busy for a few seconds
    answers: list[int] = []

    def busy_worker() -> dict | None:
        status, body = get(dashboard, "/0/data/workers.json")
        answers.append(status)
        workers = json.loads(body)["workers"] if status == 200 else []
        return next((w for w in workers if isinstance(w["current_job"], dict)), None)

    worker = wait_for(busy_worker, 60)
    assert set(answers) == {200}  # RQ's Worker.all with pickle made this page fail while busy
    assert worker["name"] == "dash-host:cpu:7"  # (its state may read idle between two batches in hand)
    call = worker["current_job"]["call_string"]
    # no image bytes, ever; a job that just finished shows its call without the image (the finish released it)
    assert call.startswith("worker.tasks.classify(") and "\\x" not in call
    assert "image=bytes[" in call or "image=" not in call


def test_only_the_dashboards_own_pages_can_requeue_or_empty_and_never_with_get(conn, dashboard):
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    job = queue.enqueue("worker.tasks.classify", kwargs={"image": b"not an image", "meta": {}})
    queue.remove(job)
    queue.failed_job_registry.add(job, exc_string="unsupported_image")
    conn.hset(job.key, "status", "failed")  # as a worker's failure leaves it
    own = {"Origin": dashboard, "X-Requested-With": "XMLHttpRequest"}  # what the dashboard's $.post sends

    assert get(dashboard, "/requeue/classify")[0] == 405  # what a cross-site <img> does
    assert post(dashboard, "/requeue/classify", {"Origin": "https://evil.example"})[0] == 403
    assert post(dashboard, "/requeue/classify", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 403
    assert queue.failed_job_registry.get_job_ids() == [job.id] and queue.count == 0
    assert post(dashboard, "/requeue/classify", own) == (200, '{"count":1,"status":"OK"}\n')
    assert queue.job_ids == [job.id] and queue.failed_job_registry.get_job_ids() == []

    assert post(dashboard, "/queue/classify/queued/empty", {"Origin": "https://evil.example"})[0] == 403
    assert queue.count == 1
    assert post(dashboard, "/queue/classify/queued/empty", own)[0] == 200
    assert queue.count == 0


def test_the_dashboard_answers_only_its_own_host_names(dashboard):
    port = dashboard.rsplit(":", 1)[1]
    assert get(dashboard, "/0/data/queues.json", {"Host": f"localhost:{port}"})[0] == 200
    assert get(dashboard, "/0/data/queues.json", {"Host": f"rebind.evil.example:{port}"})[0] == 421


def test_dashboard_password_alone_turns_on_basic_auth_as_admin(start_dashboard):
    base = start_dashboard(env={"DASHBOARD_PASSWORD": "s3cret"}, ready_status=401)
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
    assert get(base, "/0/data/queues.json")[0] == 401
    assert get(base, "/0/data/queues.json", auth)[0] == 200


def test_a_requeue_from_the_dashboard_runs_our_script_and_with_shards_state_changes_are_refused(
    conn, redis_url, start_dashboard
):
    _, as_worker = set_users(conn, redis_url)  # the Redis user docs/dashboard.md gives it: the worker's
    try:
        requeue_through(start_dashboard("--redis-url", as_worker), conn)
    finally:
        drop_users(conn)
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    sharded = start_dashboard("--redis-url", f"{redis_url},{redis_url}")
    own = {"Origin": sharded, "X-Requested-With": "XMLHttpRequest"}
    status, text = post(sharded, "/queue/classify/queued/empty", own)
    assert status == 409 and "one shard per dashboard" in text and queue.count == 2


def requeue_through(dashboard: str, conn: redis.Redis) -> None:
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    own = {"Origin": dashboard, "X-Requested-With": "XMLHttpRequest"}
    ids = []
    for _ in range(2):
        job = queue.enqueue("worker.tasks.classify", kwargs={"image": b"not an image", "meta": {}})
        queue.remove(job)
        queue.failed_job_registry.add(job, ttl=600, exc_string="unsupported_image")  # expiring, as failures do
        conn.hset(job.key, "status", "failed")
        ids.append(job.id)
    assert post(dashboard, f"/job/{ids[0]}/requeue", own) == (200, '{"status":"OK"}\n')
    assert post(dashboard, f"/job/{ids[0]}/requeue", own) == (200, '{"status":"NOT_FAILED"}\n')  # once only
    assert post(dashboard, "/requeue/classify", own) == (200, '{"count":1,"status":"OK"}\n')
    for job_id in ids:  # as `producer requeue` leaves it: kept while it waits, its old failure not answered
        assert conn.hget(f"rq:job:{job_id}", "requeued_after") is not None and conn.ttl(f"rq:job:{job_id}") == -1
    assert queue.job_ids == ids
