"""``python -m producer requeue --failed`` on failures a real worker recorded: a dry run changes nothing, a retryable
failure runs again, deterministic ones stay unless named, ``--older-than`` and ``--limit``, one atomic step per job,
and the producer's ACL with the lines docs/security.md adds for it."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result

from bench.devserver import free_port
from producer import JobFailed, JobTimeout, Producer
from producer.drivers import SyncDriver
from producer.requeue_call import RequeueCall, run_requeue
from producer.wire.results import exc_string_for, make_result, poison_error
from producer.wire.serializer import MsgpackSerializer

from ..acls import drop_users, major_version, producer_acl, set_users
from ..conftest import IMAGES, ROOT, image_bytes, wait_for, wait_for_workers

FAILED, QUEUE, FEED = "rq:failed:classify", "rq:queue:classify", "classify:results:stream"
# What requeue adds to the producer's ACL (docs/security.md), per server version: its script (EVALSHA on the failed
# registry, the job, its result stream, the queue and RQ's set of queues; TYPE, HGET, XREVRANGE, ZREM, HSET,
# PERSIST, RPUSH, SADD inside), the
# registry read with ZRANGE, each failure read with XREVRANGE.
REQUEUE_ACL_62 = "~rq:failed:classify +evalsha +eval +type +zrange +zrem +persist +xrevrange"
REQUEUE_ACL_7 = (
    "(~rq:failed:classify ~rq:job:* ~rq:results:* ~rq:queue:classify ~rq:queues +evalsha +eval +type) "
    "(~rq:failed:classify +zrange +zrem) (~rq:job:* +persist) (~rq:results:* +xrevrange)"
)


def requeue_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "producer", "--redis-url", redis_url, "requeue", "--failed", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def fail_as_poison(conn: redis.Redis, job_id: str) -> None:
    """Record a queued job failed as ``poison``, in RQ's shapes, as the worker's reaper records one."""
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    conn.lrem(QUEUE, 0, job_id)
    conn.hset(f"rq:job:{job_id}", "lost_deliveries", 3)  # the reaper counted its losses
    with conn.pipeline() as pipe:
        job.set_status("failed", pipeline=pipe)
        Result.create_failure(job, 86400, exc_string_for(poison_error(3)), pipeline=pipe)
        FailedJobRegistry("classify", connection=conn, serializer=MsgpackSerializer).add(job, 86400, pipeline=pipe)
        pipe.execute()


def failed_type(producer: Producer, job_id: str) -> str:
    with pytest.raises(JobFailed) as failed:
        producer.result(job_id, timeout=60)
    return failed.value.error["type"]


@dataclass
class Failures:
    """Failed jobs by type, the port the fetch_error ones tried (nothing listened there), a way to fail more."""

    ids: dict[str, str]
    port: int
    fail_fetches: Callable[[int], list[str]]


@pytest.fixture
def failures(redis_url, conn, start_worker) -> Iterator[Failures]:
    """A worker fails a fetch_error job (its URL's port refuses; retried, then failed), an unsupported_image and a
    forbidden_url one; a poison job is recorded; then the worker stops, so what requeue does stays in view."""
    port = free_port()
    worker = start_worker("--fetch-allow", f"http://127.0.0.1:{port}/", "--batch-size", "8")
    wait_for_workers(conn)
    producer = Producer(redis_url)

    def fail_fetches(count: int) -> list[str]:
        ids = producer.enqueue_many(image_urls=[f"http://127.0.0.1:{port}/cat.jpg"] * count)
        assert {failed_type(producer, job_id) for job_id in ids} == {"fetch_error"}
        return ids

    ids = {
        "fetch_error": fail_fetches(1)[0],
        "unsupported_image": producer.enqueue(b"junk"),
        "forbidden_url": producer.enqueue(image_url="http://example.invalid/cat.jpg"),
    }
    assert failed_type(producer, ids["unsupported_image"]) == "unsupported_image"
    assert failed_type(producer, ids["forbidden_url"]) == "forbidden_url"
    worker.terminate()
    worker.wait(timeout=30)
    ids["poison"] = producer.enqueue(image_bytes("cat.jpg"))
    fail_as_poison(conn, ids["poison"])
    yield Failures(ids, port, fail_fetches)
    producer.close()


def state(conn: redis.Redis) -> tuple:
    """The failed registry, the queue and every job's hash, and whether it expires."""
    jobs = sorted(conn.keys("rq:job:*"))
    return (
        conn.zrange(FAILED, 0, -1, withscores=True),
        conn.lrange(QUEUE, 0, -1),
        [(key, conn.hgetall(key), conn.ttl(key) == -1) for key in jobs],  # persistent or expiring
    )


def test_a_dry_run_prints_what_it_would_requeue_and_changes_nothing(conn, redis_url, failures):
    before = state(conn)
    dry = requeue_cli(redis_url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    (line,) = dry.stdout.splitlines()
    assert line.startswith(f"would requeue {failures.ids['fetch_error']}  fetch_error: ")
    assert "could not connect" in line and line.endswith("s ago)")
    assert "skipped 3: deterministic" in dry.stderr and "nothing changed" in dry.stderr
    assert all(f"{kind} 1" in dry.stderr for kind in ("unsupported_image", "forbidden_url", "poison"))
    assert state(conn) == before


def serve_images(port: int) -> ThreadingHTTPServer:
    """The photos over HTTP on ``port``, from now on."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(IMAGES)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def test_a_retryable_failure_runs_again_and_deterministic_ones_stay_failed(conn, redis_url, start_worker, failures):
    job_id = failures.ids["fetch_error"]
    server = serve_images(failures.port)  # the outage is over
    try:
        start_worker("--fetch-allow", f"http://127.0.0.1:{failures.port}/")
        done = requeue_cli(redis_url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"requeued {job_id}  fetch_error") and len(done.stdout.splitlines()) == 1
        # result() waits for this run's result: the failure before the requeue is history (it used to answer it)
        assert Producer(redis_url).result(job_id, timeout=60)["ok"]
    finally:
        server.shutdown()
        server.server_close()
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    assert job.latest_result().return_value["ok"] and job.latest_result().return_value["label"]
    runs = [fields[b"result"] for _, fields in conn.xrange(FEED) if fields[b"job_id"] == job_id.encode()]
    assert len(runs) == 2  # failed once (after its retries), then ran once more, ok
    assert {i.decode() for i in conn.zrange(FAILED, 0, -1)} == {
        failures.ids[kind] for kind in ("unsupported_image", "forbidden_url", "poison")
    }


def test_deterministic_failures_are_requeued_only_when_error_names_their_type(conn, redis_url, failures):
    done = requeue_cli(redis_url, "--error", "poison", "--error", "unsupported_image")
    assert done.returncode == 0, done.stderr
    assert sorted(line.split()[1] for line in done.stdout.splitlines()) == sorted(
        failures.ids[kind] for kind in ("poison", "unsupported_image")
    )
    assert sorted(conn.lrange(QUEUE, 0, -1)) == sorted(
        failures.ids[k].encode() for k in ("poison", "unsupported_image")
    )
    assert {i.decode() for i in conn.zrange(FAILED, 0, -1)} == {
        failures.ids[k] for k in ("fetch_error", "forbidden_url")
    }
    poison = failures.ids["poison"]
    assert conn.ttl(f"rq:job:{poison}") == -1  # it waits in the queue without expiring
    job = Job.fetch(poison, connection=conn, serializer=MsgpackSerializer)  # RQ reads it as RQ's requeue leaves it
    assert job.get_status() == "queued" and job.origin == "classify" and job.started_at is None
    assert job.ended_at is None and job.kwargs["image"] == image_bytes("cat.jpg")
    assert conn.hget(f"rq:job:{poison}", "lost_deliveries") == b"0"  # --max-deliveries tries again, not one


def test_older_than_and_limit_choose_the_oldest_failures_and_no_more(conn, redis_url, start_worker, failures):
    start_worker("--fetch-allow", f"http://127.0.0.1:{failures.port}/")
    wait_for_workers(conn)
    oldest = failures.ids["fetch_error"]
    ((entry_id, _),) = conn.xrevrange(f"rq:results:{oldest}", count=1)  # requeue's failure time: its result's id
    failed_at = int(entry_id.split(b"-")[0]) / 1000
    seconds, micros = conn.time()
    # Deliberately let time pass: the oldest failure ages past --older-than 10 (Redis's clock, as requeue reads it).
    # The two failed next are then < 10 s old when the CLI reads them, however slowly it starts.
    time.sleep(max(0.0, failed_at + 10.5 - (seconds + micros / 1e6)))
    recent = set(failures.fail_fetches(2))
    aged = requeue_cli(redis_url, "--older-than", "10", "--dry-run")
    assert [line.split()[2] for line in aged.stdout.splitlines()] == [oldest]
    assert "skipped 2: failed less than 10 s ago (fetch_error 2)" in aged.stderr
    limited = requeue_cli(redis_url, "--error", "fetch_error,poison", "--limit", "2", "--dry-run")
    assert len(limited.stdout.splitlines()) == 2 and "stopped at --limit 2" in limited.stderr
    one = requeue_cli(redis_url, "--limit", "1")
    assert one.returncode == 0 and [line.split()[1] for line in one.stdout.splitlines()] == [oldest]
    for job_id in recent:  # --limit 1 took the oldest alone: the recent failures are still failed, in the registry
        assert conn.zscore(FAILED, job_id) is not None and conn.hget(f"rq:job:{job_id}", "status") == b"failed"

    def feed_entries(job_id: str) -> int:
        return sum(1 for _, fields in conn.xrange(FEED) if fields[b"job_id"] == job_id.encode())

    wait_for(lambda: feed_entries(oldest) == 2, timeout_s=60)  # it ran again (and failed again: port still shut)
    assert all(feed_entries(job_id) == 1 for job_id in recent)  # the others were left where they were
    wait_for(lambda: conn.zcard(FAILED) == 6)


def test_each_job_is_requeued_once_in_one_atomic_step(conn, redis_url, failures):
    producer = Producer(redis_url)
    driver = SyncDriver([producer.connection])
    job_id = failures.ids["fetch_error"]
    first = driver.run(run_requeue(0, RequeueCall.of(job_id, "classify")))
    second = driver.run(run_requeue(0, RequeueCall.of(job_id, "classify")))
    assert first == ("requeued", "failed") and second == ("not_failed", "queued")  # it is queued now
    assert conn.lrange(QUEUE, 0, -1) == [job_id.encode()]
    assert driver.run(run_requeue(0, RequeueCall.of("no-such-job", "classify"))) == ("not_found", "")
    conn.set("rq:queues", "not a set")
    other = failures.ids["unsupported_image"]
    assert driver.run(run_requeue(0, RequeueCall.of(other, "classify"))) == ("wrong_type", "rq:queues")
    assert conn.zscore(FAILED, other) is not None and conn.hget(f"rq:job:{other}", "status") == b"failed"
    producer.close()


@pytest.mark.both_redis
def test_the_producer_user_requeues_with_the_acl_lines_docs_give_for_it(conn, redis_url, failures):
    extra = REQUEUE_ACL_7 if major_version(conn) >= 7 else REQUEUE_ACL_62
    producer_url, _ = set_users(conn, redis_url, f"{producer_acl(conn)} {extra}")
    try:
        dry = requeue_cli(producer_url, "--dry-run")
        assert dry.returncode == 0 and failures.ids["fetch_error"] in dry.stdout, dry.stderr
        done = requeue_cli(producer_url, "--error", "unsupported_image")
        assert done.returncode == 0, done.stderr
        assert conn.lrange(QUEUE, 0, -1) == [failures.ids["unsupported_image"].encode()]
        assert conn.hget(f"rq:job:{failures.ids['unsupported_image']}", "status") == b"queued"
    finally:
        drop_users(conn)


def test_result_of_a_requeued_job_waits_for_its_new_run(conn, redis_url):
    producer = Producer(redis_url)
    (job_id,) = producer.enqueue_many([image_bytes("cat.jpg")])
    fail_as_poison(conn, job_id)
    assert failed_type(producer, job_id) == "poison"
    assert SyncDriver([producer.connection]).run(run_requeue(0, RequeueCall.of(job_id, "classify")))[0] == "requeued"
    with pytest.raises(JobTimeout):  # not the failure from before the requeue
        producer.result(job_id, timeout=0.3)
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    ok = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    Result.create(job, Result.Type.SUCCESSFUL, ttl=500, return_value=ok)
    assert producer.result(job_id, timeout=5)["ok"]


def test_limit_takes_the_oldest_failures_first_over_every_shard(tmp_path):
    from bench.devserver import RedisServer

    servers = [RedisServer().start() for _ in range(2)]
    try:
        urls = [s.url for s in servers]
        producer = Producer(urls)
        ids = producer.enqueue_many([image_bytes("cat.jpg")] * 8)
        by_shard = {i: [j for j in ids if producer.shard_for(j).url == url] for i, url in enumerate(urls)}
        assert by_shard[0] and by_shard[1]
        # shard 1's failures are older than shard 0's: with --limit 1, the oldest is on the shard read second
        for shard, failed_ms in ((0, 2_000_000_000_000), (1, 1_000_000_000_000)):
            conn = redis.Redis.from_url(urls[shard])
            for n, job_id in enumerate(by_shard[shard]):
                fail_with_time(conn, job_id, failed_ms + n)
        oldest = by_shard[1][0]
        dry = requeue_cli(",".join(urls), "--error", "fetch_error", "--limit", "1", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert [line.split()[2] for line in dry.stdout.splitlines()] == [oldest], dry.stderr
    finally:
        for server in servers:
            server.stop()


def fail_with_time(conn: redis.Redis, job_id: str, failed_ms: int) -> None:
    """Record a queued job failed as ``fetch_error`` at ``failed_ms`` (its RQ result's stream id), in RQ's shapes."""
    import zlib
    from base64 import b64encode

    conn.lrem(QUEUE, 0, job_id)
    error = {"type": "fetch_error", "message": "the origin refused"}
    conn.hset(f"rq:job:{job_id}", mapping={"status": "failed", "origin": "classify"})
    exc = b64encode(zlib.compress(exc_string_for(error).encode())).decode()  # as RQ's Result.serialize writes it
    conn.xadd(f"rq:results:{job_id}", {"type": "2", "worker_name": "w", "exc_string": exc}, id=f"{failed_ms}-0")
    conn.zadd(FAILED, {job_id: failed_ms / 1000 + 86400})
