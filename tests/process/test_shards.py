"""A queue sharded over 3 real redis-server processes: one worker serves them all, fairly; results,
the channel and the durable feed work across shards; a shard that goes down stops only its own jobs,
which resume when it is back (append-only file on)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from bench.devserver import RedisServer
from producer import Producer
from producer.errors import ShardUnavailable
from producer.shards import rendezvous

from ..conftest import ROOT, image_bytes, wait_for
from .test_reliability import _stop


@pytest.fixture
def shards():
    servers = [RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


def worker(urls: list[str], model: object) -> subprocess.Popen:
    flags = [arg for url in urls for arg in ("--redis-url", url)]
    args = [sys.executable, "-m", "worker", "--model", str(model), *flags]
    # a TTL of 5 s, not less: a live worker starved of CPU on busy cores must not be taken for dead
    args += ["--batch-size", "8", "--worker-ttl-s", "5", "--idle-wait-ms", "200"]
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ))


def test_one_worker_serves_every_shard_and_results_come_back_from_each(shards, tiny_model_path):
    urls = [s.url for s in shards]
    producer = Producer(",".join(urls))
    feed = producer.results(group="web", start="$")
    proc = worker(urls, tiny_model_path)
    try:
        with producer.subscribe() as sub:
            ids = producer.enqueue_many([image_bytes("cat.jpg")] * 45)
            per_shard = [redis.Redis.from_url(u).llen("rq:queue:classify") for u in urls]
            assert sum(per_shard) == 45 and min(per_shard) >= 5  # spread over all three
            for job_id in ids:
                assert producer.result(job_id, timeout=90)["ok"]
            published = set()
            wait_for(
                lambda: published.update([r["job_id"]] if (r := sub.get(timeout=0.5)) else []) or published >= set(ids),
                60,
            )
        fed = set()
        wait_for(lambda: fed.update([r["job_id"]] if (r := feed.get(timeout_s=0.5)) else []) or fed >= set(ids), 60)
        for url in urls:  # each shard finished its own jobs, and knows the worker
            conn = redis.Redis.from_url(url)
            assert conn.zcard("rq:finished:classify") > 0 and conn.llen("rq:queue:classify") == 0
            assert conn.scard("rq:workers") == 1
    finally:
        _stop(proc)


def test_a_shard_that_goes_down_stops_only_its_jobs_which_resume_when_it_returns(shards, tiny_model_path):
    urls = [s.url for s in shards]
    producer = Producer(",".join(urls))
    ids = producer.enqueue_many([image_bytes("cat.jpg")] * 30)  # no worker yet: all queued
    on_down = [i for i in ids if rendezvous(producer.names, i) == 1]
    assert on_down and len(on_down) < len(ids)
    shards[1].process.terminate()  # shard 1 goes away with its jobs queued (append-only, fsync always)
    shards[1].process.wait()
    proc = worker(urls, tiny_model_path)  # starts with one shard down
    try:
        for job_id in ids:
            if job_id not in on_down:  # the other shards flow meanwhile
                assert producer.result(job_id, timeout=90)["ok"]
        refused = next(i for i in (f"during-{n}" for n in range(100)) if rendezvous(producer.names, i) == 1)
        with pytest.raises(ShardUnavailable) as down:
            producer.enqueue(image_bytes("cat.jpg"), job_id=refused)
        assert down.value.not_enqueued == [refused] and down.value.shard == producer.names[1]
        shards[1].start()  # back, with its queue
        for job_id in on_down:
            assert producer.result(job_id, timeout=90)["ok"]
        assert proc.poll() is None
    finally:
        _stop(proc)


def test_status_shows_every_shard(shards):
    import json

    urls = ",".join(s.url for s in shards)
    Producer(urls).enqueue_many([b"x"] * 9)
    out = subprocess.run(
        [sys.executable, "-m", "producer", "--redis-url", urls, "status", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    statuses = json.loads(out.stdout)
    assert [s["shard"] for s in statuses] == Producer(urls).names and sum(s["queued"] for s in statuses) == 9
    text = subprocess.run(
        [sys.executable, "-m", "producer", "--redis-url", urls, "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert text.count("shard ") == 3
