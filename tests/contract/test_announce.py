"""The announcement producers' cache lookups read: a swap's announcement that meets an unavailable Redis is
written at the next heartbeat once Redis answers again (else producers would keep looking up the old tag
for the cache's TTL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from bench.devserver import RedisServer
from producer.wire import keys
from producer.wire.cache import parse_announcement
from producer.wire.serializer import dumps
from worker.announce import announce_model, announcement
from worker.config import WorkerSettings
from worker.store import StoreUnavailable, WorkerStats
from worker.store.rq import RedisStore


@pytest.fixture
def durable() -> Iterator[RedisServer]:
    """A server whose data outlives a restart (the worker key too: no registration announces again)."""
    server = RedisServer(extra_args=["--appendonly", "yes"]).start()
    yield server
    server.stop()


def announced(conn: redis.Redis) -> str:
    return parse_announcement(conn.get(keys.announcement("classify")))["tag"]


def test_a_swaps_announcement_missed_in_an_outage_is_written_at_the_next_heartbeat(durable):
    settings = WorkerSettings(model="m", redis_url=durable.url, precision="fp32")
    conn = redis.Redis.from_url(durable.url, socket_timeout=2, socket_connect_timeout=0.5)
    store = RedisStore(conn, "classify", "w1", cache=announcement(settings, "tiny@7", "cpu"))
    store.register(threading.Event())
    assert announced(conn) == "tiny@7"
    durable.process.terminate()
    durable.process.wait(10)
    announce_model(store, settings, "tiny@8", "cpu")  # what a swap does; logged, not raised
    with pytest.raises(StoreUnavailable):
        store.heartbeat(WorkerStats())
    durable.start()
    assert conn.exists("rq:worker:w1")  # still registered: only the heartbeat can announce again
    store.heartbeat(WorkerStats())
    assert announced(conn) == "tiny@8"
    assert conn.hget("rq:worker:w1", "model") == b"tiny@8"


def store_serving(url: str, name: str, tag: str, since: float) -> RedisStore:
    """A worker's store that serves ``tag`` since ``since`` (what a worker announces at start or after a swap)."""
    conn = redis.Redis.from_url(url, socket_timeout=2)
    settings = WorkerSettings(model="m", redis_url=url, precision="fp32", cache_ttl_s=600)
    return RedisStore(conn, "classify", name, cache={**announcement(settings, tag, "cpu"), "since": since})


def test_a_worker_still_serving_an_older_model_never_announces_it_over_a_newer_one(redis_url, conn):
    old = store_serving(redis_url, "w-old", "tiny@7", since=1000.0)  # refused tiny@8, or not rolled yet
    new = store_serving(redis_url, "w-new", "tiny@8", since=2000.0)
    old.register(threading.Event())
    new.register(threading.Event())
    assert announced(conn) == "tiny@8"
    old.register(threading.Event())  # registering again (after a Redis restart), or a due re-announcement
    old.announce(old.cache)
    assert announced(conn) == "tiny@8"  # producers keep looking up the newer model's entries
    assert conn.hget("rq:worker:w-old", "model") == b"tiny@7"  # `producer status` still shows what it serves
    rollback = store_serving(redis_url, "w-back", "tiny@7", since=3000.0)  # a model begun later wins: a rollback
    rollback.announce(rollback.cache)
    assert announced(conn) == "tiny@7"


def test_an_announcement_from_before_since_existed_is_replaced_and_a_foreign_value_overwritten(redis_url, conn):
    key = keys.announcement("classify")
    conn.set(key, dumps({"tag": "tiny@6", "precision": "fp32", "decode": "cpu", "topk": 5, "ttl_s": 600}))
    assert announced(conn) == "tiny@6"  # what workers before this one wrote: no since
    store = store_serving(redis_url, "w1", "tiny@7", since=1.0)
    store.announce(store.cache)
    assert announced(conn) == "tiny@7"
    conn.set(key, b"\xc1 not msgpack")
    store.announce(store.cache)
    assert announced(conn) == "tiny@7"


def test_a_nearly_full_redis_defers_the_announcement_to_a_later_heartbeat(redis_url, conn):
    store = store_serving(redis_url, "w1", "tiny@7", since=1.0)
    store.register(threading.Event())
    newer = {**store.cache, "tag": "tiny@8", "since": 2.0}
    conn.set("filler", b"x" * 256 * 1024)
    conn.config_set("maxmemory", str(int(int(conn.info("memory")["used_memory"]) / 0.95)))  # 95% full
    try:
        store.announce(newer)  # logged and deferred, not raised: the swap goes on
        assert announced(conn) == "tiny@7"
    finally:
        conn.delete("filler")
        conn.config_set("maxmemory", "0")
    store.heartbeat(WorkerStats())
    assert announced(conn) == "tiny@8"
