"""Faults against real worker processes and a real Redis: kill -9, poison jobs, signals, dropped connections."""

from __future__ import annotations

import signal
import time

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from bench.devserver import RedisServer
from producer import JobFailed, Producer
from producer.wire.serializer import MsgpackSerializer

from ..conftest import all_images, image_bytes, wait_for, wait_for_workers

FAST = ("--worker-ttl-s", "5")  # dead workers are noticed within ~8 s (the TTL, then a reap every 2.5 s); not
# less: a live worker starved of CPU for a few seconds on busy cores must not be taken for dead


def photos() -> list[bytes]:
    return [p.read_bytes() for p in all_images() if not p.name.startswith("odd")]


def final_states(conn: redis.Redis, ids: list[str]) -> dict[str, str]:
    return {i: Job.fetch(i, connection=conn, serializer=MsgpackSerializer).get_status().value for i in ids}


def assert_all_finished_once(conn: redis.Redis, ids: list[str]) -> None:
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    assert set(final_states(conn, ids).values()) == {"finished"}
    assert queue.finished_job_registry.count == len(ids) and queue.failed_job_registry.count == 0
    assert queue.started_job_registry.count == 0 and conn.llen(queue.intermediate_queue_key) == 0
    assert len(queue) == 0
    for job_id in ids:  # one success each in RQ's result stream: no second final write
        results = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).results()
        assert [r.type.name for r in results] == ["SUCCESSFUL"], job_id


def test_kill_9_mid_batch_jobs_are_run_again_by_another_worker(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    ids = producer.enqueue_many([photos()[i % 9] for i in range(120)])
    victim = start_worker("--batch-size", "8", *FAST)
    wip = Queue("classify", connection=conn, serializer=MsgpackSerializer).started_job_registry.key

    def frozen_holding_jobs() -> bool:  # SIGSTOP it at a moment it holds a started batch
        if conn.zcard(wip) == 0:
            return False
        victim.send_signal(signal.SIGSTOP)
        if conn.zcard(wip) > 0:
            return True
        victim.send_signal(signal.SIGCONT)
        return False

    wait_for(frozen_holding_jobs, 60, 0.001)
    held = conn.zcard(wip)
    victim.kill()  # SIGKILL while it holds a started batch
    victim.wait()
    killed_at = time.monotonic()
    start_worker("--batch-size", "8", *FAST)
    for job_id in ids:
        assert producer.result(job_id, timeout=60)["ok"]
    assert time.monotonic() - killed_at < 60
    assert_all_finished_once(conn, ids)
    lost = [i for i in ids if int(conn.hget(Job.key_for(i), "lost_deliveries") or 0) > 0]
    assert held > 0 and len(lost) >= 1


def test_a_job_that_kills_the_worker_ends_as_poison_and_spares_its_batch_mates(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    good = producer.enqueue_many(photos()[:6])
    (bad,) = producer.enqueue_many([b"CRASH-ME" + image_bytes("cat.jpg")])
    crashes = 0
    for _ in range(6):
        proc = start_worker("--batch-size", "8", *FAST, crash_marker="CRASH-ME")
        wait_for(lambda p=proc: p.poll() is not None or _failed(conn, bad), 60)
        if proc.poll() is None:  # the poison job was failed; this worker lives on
            break
        assert proc.returncode == 86
        crashes += 1
    with pytest.raises(JobFailed) as failed:
        producer.result(bad, timeout=30)
    assert failed.value.error["type"] == "poison" and crashes == 3
    for job_id in good:
        assert producer.result(job_id, timeout=60)["ok"]
        assert int(conn.hget(Job.key_for(job_id), "lost_deliveries") or 0) <= 1
    assert Job.fetch(bad, connection=conn, serializer=MsgpackSerializer).get_status() == JobStatus.FAILED


def _failed(conn: redis.Redis, job_id: str) -> bool:
    return conn.hget(Job.key_for(job_id), "status") == b"failed"


def test_sigterm_mid_run_finishes_the_batch_in_hand_and_exits_0(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    ids = producer.enqueue_many([photos()[i % 9] for i in range(200)])
    proc = start_worker("--batch-size", "8")
    wip = Queue("classify", connection=conn, serializer=MsgpackSerializer).started_job_registry.key
    wait_for(lambda: conn.zcard(wip) > 0, 60, 0.001)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    states = final_states(conn, ids)
    assert set(states.values()) <= {"finished", "queued"} and "finished" in states.values()
    assert conn.zcard(wip) == 0 and conn.llen("rq:queue:classify:intermediate") == 0
    assert len(Queue("classify", connection=conn)) == list(states.values()).count("queued")


def test_second_signal_exits_at_once_and_the_jobs_are_recovered(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    ids = producer.enqueue_many([photos()[i % 9] for i in range(150)])
    proc = start_worker("--batch-size", "8", *FAST)
    wip = Queue("classify", connection=conn, serializer=MsgpackSerializer).started_job_registry.key
    wait_for(lambda: conn.zcard(wip) > 0, 60, 0.001)
    proc.send_signal(signal.SIGTERM)  # two different signals: two pending SIGINTs would merge into one
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 1
    start_worker("--batch-size", "8", *FAST)
    for job_id in ids:
        assert producer.result(job_id, timeout=60)["ok"]
    assert_all_finished_once(conn, ids)


def test_client_kill_mid_run_loses_nothing(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    ids = producer.enqueue_many([photos()[i % 9] for i in range(150)])
    start_worker("--batch-size", "8", *FAST)
    wait_for(lambda: conn.hlen(Job.key_for(ids[20])) and _finished(conn, ids[20]), 60)
    killed = conn.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    for job_id in ids:
        assert producer.result(job_id, timeout=60)["ok"]
    assert_all_finished_once(conn, ids)


def _finished(conn: redis.Redis, job_id: str) -> bool:
    return conn.hget(Job.key_for(job_id), "status") == b"finished"


def test_redis_restart_with_append_only_file_loses_nothing(start_worker, tiny_model_path, tmp_path):
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        conn = redis.Redis.from_url(server.url)
        producer = Producer(server.url)
        ids = producer.enqueue_many([photos()[i % 9] for i in range(150)])
        proc = _worker_on(server.url, tiny_model_path)
        wait_for(lambda: _finished(conn, ids[10]), 60)
        server.restart()
        for job_id in ids:
            assert Producer(server.url).result(job_id, timeout=90)["ok"]
        assert proc.poll() is None
        assert_all_finished_once(redis.Redis.from_url(server.url), ids)
    finally:
        _stop(locals().get("proc"))
        server.stop()


def test_sigterm_while_redis_is_down_exits_1_within_the_timeout_and_nothing_is_lost(tiny_model_path, tmp_path):
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    log = tmp_path / "worker.log"
    try:
        conn = redis.Redis.from_url(server.url)
        # enough jobs that the worker is still busy when Redis goes (a faster worker drained 150 in the
        # moment between the 11th job's end and the kill, and had nothing left to keep)
        ids = Producer(server.url).enqueue_many([photos()[i % 9] for i in range(600)])
        # DEBUG: an outage is one warning; each retry (the finisher's says what it keeps) is a debug line
        proc = _worker_on(server.url, tiny_model_path, log, "--shutdown-timeout-s", "3", "--log-level", "DEBUG")
        wait_for(lambda: _finished(conn, ids[10]), 60)
        server.process.kill()  # Redis dies at once with batches in hand (appendfsync always: nothing acknowledged lost)
        server.process.wait()
        wait_for(lambda: "finished job(s) kept" in log.read_text(), 60)  # results it cannot record
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 1  # a bounded wait, then a non-zero exit
        assert time.monotonic() - signalled < 15
        text = log.read_text()
        assert "unrecorded" in text and text.count("unavailable") < 100  # backed off, no busy loop
        assert text.count("WARNING worker.store pid") == 1  # the outage, said once
        server.start()  # the append-only file brings the queue back
        conn = redis.Redis.from_url(server.url)
        proc = _worker_on(server.url, tiny_model_path)
        for job_id in ids:  # the reaper re-queues what the first worker could not record
            assert Producer(server.url).result(job_id, timeout=90)["ok"]
        assert_all_finished_once(conn, ids)
    finally:
        _stop(locals().get("proc"))
        server.stop()


def test_a_fixed_name_is_refused_while_its_owner_beats_and_taken_over_once_it_died(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    owner = start_worker("--name", "ad-gpu-0", "--batch-size", "8", *FAST)
    wait_for_workers(conn)
    second = start_worker("--name", "ad-gpu-0", *FAST)
    assert second.wait(timeout=60) == 2  # the owner keeps beating: a clear refusal, nothing disturbed
    ids = producer.enqueue_many([photos()[i % 9] for i in range(120)])
    wip = Queue("classify", connection=conn, serializer=MsgpackSerializer).started_job_registry.key
    wait_for(lambda: conn.zcard(wip) > 0, 60, 0.001)
    owner.kill()  # SIGKILL with jobs started: its key lives on until its TTL
    owner.wait()
    restarted = time.monotonic()
    start_worker("--name", "ad-gpu-0", "--batch-size", "8", *FAST)  # takes over within one TTL
    for job_id in ids:  # not after the 360 s of the predecessor's execution keys
        assert producer.result(job_id, timeout=60)["ok"]
    assert time.monotonic() - restarted < 60
    assert_all_finished_once(conn, ids)


def _worker_on(url: str, model: object, log: object = None, *extra: str):
    import os
    import subprocess
    import sys

    from ..conftest import ROOT

    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(model),
        "--redis-url",
        url,
        "--batch-size",
        "8",
        *FAST,
        *extra,
    ]
    out = open(log, "wb") if log else None  # noqa: SIM115 - the process owns it
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stderr=out)


def _stop(proc: object) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_worker_started_before_redis_waits_for_it(tiny_model_path, tmp_path):
    server = RedisServer()
    server.start()
    url = server.url
    server.process.terminate()
    server.process.wait()
    log = tmp_path / "worker.log"
    proc = _worker_on(url, tiny_model_path, log)
    try:
        wait_for(lambda: "unreachable" in log.read_text(), 60)  # checked before the model loads
        server.start()
        conn = redis.Redis.from_url(url)
        wait_for_workers(conn, timeout_s=60)
        assert Producer(url).classify(image_bytes("cat.jpg"), timeout=60)["ok"]
    finally:
        _stop(proc)
        server.stop()
