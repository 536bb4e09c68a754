"""Redis fails over: a worker and a producer on ``redis+sentinel://`` keep working across SIGKILLed primaries.

Real processes on loopback: a primary, a replica and three sentinels (bench/sentinelserver.py), one
worker process, producers in this process. With ``wait_replicas=1`` no job whose enqueue returned is
lost, across five failovers in one run; the worker never restarts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from bench.sentinelserver import SentinelGroup
from producer import JobOptions, NotReplicated, Producer, ShardUnavailable
from producer.wire.keys import results_stream
from producer.wire.serializer import loads
from worker.redisconn import connect

from ..conftest import ROOT, image_bytes, wait_for


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup(replicas=1) as started:
        yield started


@pytest.fixture
def worker(group: SentinelGroup, tiny_model_path, tmp_path) -> Iterator[subprocess.Popen]:
    args = [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", group.url,
            "--batch-size", "8", "--idle-wait-ms", "200", "--worker-ttl-s", "6"]  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ}, stderr=out)
    proc.log = log  # type: ignore[attr-defined]
    yield proc
    sys.stderr.write(log.read_text(errors="replace")[-4000:])  # shown when a test fails
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stream(threading.Thread):
    """Enqueues jobs with caller-chosen ids until stopped; an id counts as acknowledged once its enqueue
    returned. A refused enqueue (failover in progress, replica not yet back) is retried with the same id."""

    def __init__(self, url: str, options: JobOptions) -> None:
        super().__init__(daemon=True)
        self.producer = Producer(url, options=options)
        self.acknowledged: list[str] = []
        self.refused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n, photo = 0, image_bytes("cat.jpg")
        while not self.stopping.is_set():
            job_id = f"failover-{n}"
            try:
                self.producer.enqueue(photo, job_id=job_id)
            except (NotReplicated, ShardUnavailable, redis.ConnectionError, redis.TimeoutError):
                self.refused += 1
                time.sleep(0.05)
                continue  # the same id again: creation is create-if-absent
            self.acknowledged.append(job_id)
            n += 1
            time.sleep(0.01)


def answered(url: str, ids: list[str]) -> list[str]:
    """The ids among ``ids`` whose job has a final result on the current primary."""
    conn = connect(url)
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        statuses = pipe.execute()
    return [i for i, s in zip(ids, statuses, strict=True) if s in (b"finished", b"failed")]


def test_with_wait_replicas_no_acknowledged_job_is_lost_across_five_failovers(group, worker):
    stream = Stream(group.url, JobOptions(wait_replicas=1, wait_timeout_ms=500))
    stream.start()
    pid = worker.pid
    for _ in range(5):
        seen = len(stream.acknowledged)
        wait_for(lambda seen=seen: len(stream.acknowledged) >= seen + 20, 60)  # jobs flow, batches in hand
        old = group.kill_primary()
        group.wait_for_promotion(old)
        group.revive(old)  # the dead node comes back as a replica: the next failover has a target
        group.wait_until(lambda: group.replicas_in_sync() == 1, 30, "the revived replica to sync")
    wait_for(lambda: len(stream.acknowledged) >= 20 + seen, 60)
    stream.stopping.set()
    stream.join(10)
    ids = list(stream.acknowledged)
    wait_for(lambda: len(answered(group.url, ids)) == len(ids), 240)  # a finish lost in a failover: give-back
    assert worker.poll() is None and worker.pid == pid  # never restarted
    feed: dict[str, set] = {}
    for _, fields in connect(group.url).xrange(results_stream("classify")):
        result = loads(fields[b"result"])
        feed.setdefault(result["job_id"], set()).add((result["ok"], result["label"]))
    assert all(len(outcomes) == 1 for outcomes in feed.values())  # answered twice: never differently


def test_an_idle_queue_answers_the_first_classify_after_a_failover(group, worker):
    producer = Producer(group.url)
    assert producer.classify(image_bytes("cat.jpg"), timeout=60)["ok"]
    old = group.kill_primary()
    group.wait_for_promotion(old)
    started = time.monotonic()
    result = None
    while result is None and time.monotonic() - started < 60:
        try:
            result = producer.classify(image_bytes("coffee.jpg"), timeout=30)
        except (ShardUnavailable, redis.ConnectionError):
            time.sleep(0.2)  # the producer's pool learns the new primary on its next connection
    assert result is not None and result["ok"]
    assert worker.poll() is None
    lines = (re.search(r" (?:WARNING|ERROR) \S+ pid=\d+ (.*)$", line) for line in worker.log.read_text().splitlines())
    said = [found[1] for found in lines if found]  # a failover is one event, not a line per thread and retry
    assert len(said) == 2 and said[0].startswith("redis unavailable (") and said[1].startswith("redis answers again"), (
        said
    )


def test_the_dashboard_reads_a_sentinel_managed_queue(group):
    from producer.dashboard import create_app

    producer = Producer(group.url)
    producer.enqueue(image_bytes("cat.jpg"))
    app = create_app([group.url])
    client = app.test_client()
    page = client.get("/0/data/queues.json", headers={"Host": "127.0.0.1:9181"})
    assert page.status_code == 200, page.data[:300]
    queues = {q["name"]: q["count"] for q in page.get_json()["queues"]}
    assert queues.get("classify") == 1


def test_a_repaired_node_is_not_elected_before_its_first_sync(group):
    """The harness rejoins a node that lost its data the way RELIABILITY.md says ("Repairing a node"): with
    replica-priority 0 until it has synced, so the sentinels cannot elect it empty; then promotable again."""
    primary = redis.Redis(port=group.current_primary_port())
    primary.set("acknowledged", "1")
    assert primary.wait(1, 5000) == 1
    old = group.kill_primary()
    new = group.wait_for_promotion(old)
    group.rejoin(old)

    def electable_but_for_its_priority() -> bool:  # up and in sync as every sentinel sees it, priority 0
        views = group.replica_views(old)
        return len(views) == 3 and all(
            v["flags"] == "slave" and v["master-link-status"] == "ok" and int(v["slave-priority"]) == 0 for v in views
        )

    group.wait_until(electable_but_for_its_priority, 30, "the sentinels to see the rejoined node")
    sentinel = redis.Redis(port=group.sentinels[0].port)
    group.wait_until(group.settled, 30, "the sentinels to settle")
    with pytest.raises(redis.ResponseError, match="NOGOODSLAVE"):
        sentinel.execute_command("SENTINEL", "FAILOVER", "adclassify")  # the only replica may not be elected
    group.make_promotable(old)
    group.wait_until(group.settled, 30, "the sentinels to settle")
    sentinel.execute_command("SENTINEL", "FAILOVER", "adclassify")
    group.wait_for_promotion(new)
    assert group.current_primary_port() == old
    assert redis.Redis(port=old).get("acknowledged") == b"1"  # promoted with the data it synced
