"""A primary demoted behind a plain address (a DNS name or a virtual IP that moves on failover, not Sentinel):
its pooled connections answer READONLY to every write while a PING still answers, so a client that keeps them
never reaches the new primary. Both sides' clients drop a connection on READONLY and connect afresh."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from bench.devserver import RedisServer, free_port
from producer import Producer
from producer.connections import connect as producer_connect
from producer.connections import connect_async
from producer.errors import ShardUnavailable
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps
from worker.redisconn import connect as worker_connect
from worker.store import StoreUnavailable
from worker.store.rqbase import unavailable

from ..conftest import image_bytes


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def demote(admin: redis.Redis) -> None:
    admin.replicaof("127.0.0.1", free_port())  # a replica of a primary that is not there: read-only, as on failover


@pytest.mark.parametrize("connect", [worker_connect, producer_connect], ids=["worker", "producer"])
def test_a_connection_to_a_demoted_primary_is_dropped_at_its_first_readonly_reply(server, connect):
    client, admin = connect(server.url), redis.Redis.from_url(server.url)
    client.set("before", 1)
    first = client.client_id()
    demote(admin)
    try:
        with pytest.raises(StoreUnavailable, match="read only replica"):
            unavailable(lambda: client.set("during", 1))  # the worker's stages retry this with back-off
        assert client.client_id() != first  # a new connection: where a moved address would now lead
        assert client.get("before") == b"1"  # reads still answer on the replica
    finally:
        admin.replicaof("no", "one")
    client.set("after", 1)


def test_an_enqueue_on_a_demoted_primary_names_its_jobs_not_enqueued_and_a_retry_after_promotion_succeeds(server):
    producer, admin = Producer(server.url), redis.Redis.from_url(server.url)
    photo = image_bytes("cat.jpg")
    producer.enqueue(photo, job_id="ad-1")
    demote(admin)
    try:
        with pytest.raises(ShardUnavailable) as raised:
            producer.enqueue_many([photo], job_ids=["ad-2"])
        assert raised.value.not_enqueued == ["ad-2"]
    finally:
        admin.replicaof("no", "one")
    assert producer.enqueue_many([photo], job_ids=["ad-2"]) == ["ad-2"]
    assert admin.llen("rq:queue:classify") == 2


def test_a_primary_cut_off_from_its_replicas_is_unavailable_to_both_sides_not_a_refusal(server, caplog):
    admin, producer, client = redis.Redis.from_url(server.url), Producer(server.url), worker_connect(server.url)
    admin.config_set("min-replicas-to-write", 1)  # no replica: writes refused (NOREPLICAS), as when partitioned
    try:
        with pytest.raises(ShardUnavailable) as raised:
            producer.enqueue_many([image_bytes("cat.jpg")], job_ids=["ad-3"])
        assert raised.value.not_enqueued == ["ad-3"]
        with caplog.at_level("ERROR", logger="worker.store"), pytest.raises(StoreUnavailable, match="NOREPLICAS"):
            unavailable(lambda: client.set("k", 1))
        assert "refused" not in caplog.text  # an outage (one warning, retried), not an error per call
    finally:
        admin.config_set("min-replicas-to-write", 0)
    assert producer.enqueue_many([image_bytes("cat.jpg")], job_ids=["ad-3"]) == ["ad-3"]


def test_a_feed_consumer_waits_out_a_demoted_primary_and_reads_on_once_it_is_writable_again(server):
    admin, producer = redis.Redis.from_url(server.url), Producer(server.url)
    feed = producer.results("web", start="0")
    assert feed.get(timeout_s=0.2) is None  # the group exists
    demote(admin)
    try:
        assert feed.get(timeout_s=1.0) is None  # READONLY for XREADGROUP: waited out, not raised
    finally:
        admin.replicaof("no", "one")
    stream = results_stream("classify")
    result = make_result("j1", model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    admin.xadd(stream, {"job_id": "j1", "result": dumps(result)})
    got = feed.get(timeout_s=10)
    assert got is not None and got["job_id"] == "j1"


def test_the_async_producers_connection_to_a_demoted_primary_is_dropped_too(server):
    admin = redis.Redis.from_url(server.url)

    async def main() -> None:
        client = connect_async(server.url)
        first = await client.client_id()
        demote(admin)
        try:
            with pytest.raises(redis.ReadOnlyError):
                await client.set("during", 1)
            assert await client.client_id() != first  # connected afresh
        finally:
            admin.replicaof("no", "one")
        await client.set("after", 1)
        await client.aclose()

    asyncio.run(main())
