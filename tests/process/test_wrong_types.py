"""Keys of the wrong type written with a web backend's credentials while a real worker (the worker ACL) runs:
the jobs wait where they are, the worker says so (log, metric, ``producer status``), and every job is
answered once, after the keys are deleted. The producer user has Redis 6.2's ACL, the one that lets it
write them (on 6.2 and 7 alike); tests/contract/test_wrong_types.py goes through every key and type."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.devserver import free_port
from producer import JobFailed, Producer
from producer.status import gather

from ..acls import PRODUCER_ACL_62, drop_users, set_users
from ..conftest import ROOT, image_bytes, wait_for, wait_for_workers

pytestmark = pytest.mark.both_redis  # the ACL rules and what 6.2 lets a script do differ

QUEUE, WIP = "rq:queue:classify", "rq:wip:classify"
BROKEN = {WIP: "hash", "rq:finished:classify": "hash", "rq:failed:classify": "set", "classify:results:stream": "list"}


TTL_S = 5  # the worker's TTL: not less, or a live worker starved of CPU on busy cores could be taken for dead


def wip_misfits(port: int) -> float:
    """``adclassify_wrong_type_keys_total{key="rq:wip:classify"}`` on the worker's metrics page (0: none yet)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = (s for family in text_string_to_metric_families(text) for s in family.samples)
    return sum(s.value for s in samples if s.name == "adclassify_wrong_type_keys_total" and s.labels["key"] == WIP)


def results_of(conn, job_id: str) -> int:
    return conn.xlen(f"rq:results:{job_id}")


def test_keys_of_the_wrong_type_written_by_the_producer_user_cost_no_job(redis_url, conn, tiny_model_path, tmp_path):
    producer_url, worker_url = set_users(conn, redis_url, PRODUCER_ACL_62)
    hostile = redis.Redis.from_url(producer_url)
    hostile.hset(WIP, "x", "y")  # the one command
    conn.hset("rq:finished:classify", "x", "y")  # another client's doing: the producer user may not write it now
    hostile.sadd("rq:failed:classify", "x")
    hostile.rpush("classify:results:stream", "x")
    port, log = free_port(), tmp_path / "worker.log"
    args = [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", worker_url]
    args += ["--worker-ttl-s", str(TTL_S), "--idle-wait-ms", "200", "--metrics-port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stderr=out)
    try:
        producer = Producer(producer_url)
        good = producer.enqueue_many([image_bytes("cat.jpg")] * 12)
        bad = producer.enqueue_many([b"not an image"] * 2)  # fail for good: the failed registry is needed
        wait_for_workers(conn)
        wait_for(lambda: "rq:wip:classify (wip) is a hash, not a zset" in log.read_text(), 30)
        found = wait_for(lambda: wip_misfits(port), 30)  # the heartbeat has counted the first tries
        wait_for(lambda: wip_misfits(port) > found, 30)  # and the worker tried again since: still nothing taken
        assert conn.llen(QUEUE) == 14 and {conn.hget(f"rq:job:{i}", "status") for i in good + bad} == {b"queued"}
        status = gather(conn, "classify")
        assert set(status["wrong_type_keys"]) == set(BROKEN) and status["queued"] == 14
        assert wip_misfits(port) > found

        conn.delete(WIP)  # the operator deletes it: the good jobs are answered, without the optional writes
        for job_id in good:
            assert producer.result(job_id, timeout=60)["ok"]
        assert {conn.hget(f"rq:job:{i}", "status") for i in bad} <= {b"queued", b"started"}  # held, not lost
        assert conn.xlen(f"rq:results:{bad[0]}") == 0

        conn.delete(*(set(BROKEN) - {WIP}))  # (the started registry holds the failed jobs now)
        for job_id in bad:
            with pytest.raises(JobFailed):
                producer.result(job_id, timeout=60)
        assert [results_of(conn, i) for i in good + bad] == [1] * 14  # one final result each
        assert set(conn.zrange("rq:failed:classify", 0, -1)) == {i.encode() for i in bad}

        wait_for(lambda: conn.llen(QUEUE) == 0 and conn.zcard(WIP) == 0, 30)
        hostile.hset(QUEUE, "x", "y")  # while it is empty: enqueues and takes are refused
        with pytest.raises(redis.ResponseError):
            producer.enqueue(image_bytes("cat.jpg"))
        time.sleep(TTL_S + 1)  # deliberately more than a TTL: the worker beats on and stays listed
        assert [w["state"] for w in gather(conn, "classify")["workers"]] in (["idle"], ["busy"])
        conn.delete(QUEUE)
        assert producer.classify(image_bytes("cat.jpg"), timeout=60)["ok"]
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        drop_users(conn)
