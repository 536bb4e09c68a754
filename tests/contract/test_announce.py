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
