"""The results channel merged over shards: a reader that falls behind loses the oldest results (counted and
warned of, best-effort as the channel is), never the process's memory; a shard's subscription that stops on an
error is raised to the reader, who would otherwise wait for ever."""

from __future__ import annotations

import queue

import pytest
import redis

from bench.devserver import RedisServer
from producer import channel
from producer.channel import PumpFailed, offer, subscribe
from producer.wire.keys import results_channel
from producer.wire.results import make_result
from producer.wire.serializer import dumps

from ..conftest import wait_for

CHANNEL = results_channel("classify")


@pytest.fixture
def two():
    servers = [RedisServer().start() for _ in range(2)]
    yield [redis.Redis.from_url(s.url) for s in servers]
    for server in servers:
        server.stop()


def publish(conn: redis.Redis, job_id: str) -> None:
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    conn.publish(CHANNEL, dumps(result))


def test_a_full_buffer_drops_its_oldest_item():
    buffer: queue.Queue = queue.Queue(2)
    assert offer(buffer, 1) == 0 and offer(buffer, 2) == 0
    assert offer(buffer, 3) == 1
    assert [buffer.get_nowait(), buffer.get_nowait()] == [2, 3]


def test_a_reader_behind_keeps_the_newest_results_and_is_told_how_many_went(two, monkeypatch, caplog):
    monkeypatch.setattr(channel, "MAX_BUFFERED", 5)
    merged = subscribe(two, CHANNEL)
    try:
        for i in range(20):
            publish(two[i % 2], f"j{i}")
        assert wait_for(lambda: merged.dropped == 15)
        got = [merged.get(timeout=5)["job_id"] for _ in range(5)]
        assert len(got) == 5 and "j19" in got and merged.get(timeout=0.2) is None
        assert "1 result(s) dropped" in caplog.text  # warned at the first, then every MAX_BUFFERED
    finally:
        merged.close()


def test_a_shard_subscription_that_stops_on_an_error_is_raised_to_the_reader(two):
    merged = subscribe(two, CHANNEL)
    try:

        def broken(**_options: object) -> None:
            raise RuntimeError("pubsub connection not set")  # what redis-py raises for a pubsub reset under it

        publish(two[1], "before")  # read first: the failure comes after what arrived before it
        assert merged.get(timeout=5)["job_id"] == "before"
        merged.subs[0]._pubsub.get_message = broken
        with pytest.raises(PumpFailed, match="stopped"):
            merged.get(timeout=10)
    finally:
        merged.close()
