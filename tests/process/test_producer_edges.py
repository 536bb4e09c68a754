"""The producer's subscriptions, feed and result waits at their edges, against real Redis servers: an asyncio
subscription that is live when awaited and ended by ``close()``, a sync subscription and a feed that wait out
a server that is away, and wrong credentials that are no outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from bench.devserver import RedisServer, free_port
from producer import Producer
from producer.aio import AsyncProducer
from producer.wire.keys import results_channel, results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps

from ..conftest import wait_for

CHANNEL, STREAM = results_channel("classify"), results_stream("classify")


def result(job_id: str) -> bytes:
    return dumps(make_result(job_id, model="tiny@7", worker="test", timings_ms={}, meta={}))


@pytest.fixture
def restartable() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_an_awaited_async_subscription_is_live_at_once_and_close_ends_it(redis_url, conn):
    async def go() -> None:
        producer = AsyncProducer(redis_url)
        subscription = await producer.subscribe()  # subscribed on the server when this returns
        conn.publish(CHANNEL, result("published-right-after"))
        assert (await subscription.get(timeout=10))["job_id"] == "published-right-after"
        async for got in producer.subscribe():  # the other way, unchanged: it subscribes at the first read
            assert got is not None
            break
        await producer.close()
        assert subscription.closed and await subscription.get(timeout=0.5) is None
        assert conn.pubsub_numsub(CHANNEL)[0][1] == 0  # unsubscribed: no pump reconnected after the close

    async def with_publisher() -> None:
        publishing = asyncio.create_task(publish_until_cancelled(conn))
        try:
            await go()
        finally:
            publishing.cancel()

    asyncio.run(asyncio.wait_for(with_publisher(), 60))


async def publish_until_cancelled(conn: redis.Redis) -> None:
    while True:  # feeds the second, lazily subscribed reader
        await asyncio.sleep(0.05)
        conn.publish(CHANNEL, result("later"))


def test_a_sync_subscription_waits_out_a_server_that_is_away(restartable):
    producer = Producer(restartable.url)
    subscription = producer.subscribe()
    restartable.process.terminate()
    restartable.process.wait(10)
    began = time.monotonic()
    assert subscription.get(timeout=1.5) is None  # waited, not raised
    assert time.monotonic() - began >= 1.0
    restartable.start()
    publisher = redis.Redis.from_url(restartable.url)
    got: list[dict] = []

    def delivered() -> bool:  # the next reads connect and subscribe again; what is published then arrives
        publisher.publish(CHANNEL, result("after-the-restart"))
        got.extend(filter(None, [subscription.get(timeout=0.2)]))
        return bool(got)

    wait_for(delivered, timeout_s=20)
    assert got[0]["job_id"] == "after-the-restart"
    producer.close()


def test_a_sync_feed_opens_with_a_shard_away_and_reads_the_others(redis_url, conn):
    away = f"redis://127.0.0.1:{free_port()}/0"
    producer = Producer([redis_url, away])
    feed = producer.results(group="web")  # used to raise the away shard's ConnectionError
    conn.xadd(STREAM, {"job_id": "on-the-live-shard", "result": result("on-the-live-shard")})
    assert feed.get(timeout_s=20)["job_id"] == "on-the-live-shard"
    producer.close()


def test_wrong_credentials_are_raised_at_once_not_waited_out_as_an_outage():
    server = RedisServer().start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", "right")
        producer = Producer(f"redis://:wrong@127.0.0.1:{server.port}/0")
        began = time.monotonic()
        with pytest.raises(redis.AuthenticationError):
            producer.result("some-job", timeout=20)
        assert time.monotonic() - began < 10  # not the whole timeout, then JobTimeout
        producer.close()
    finally:
        server.stop()


def test_an_async_subscription_that_could_not_open_raises_again_instead_of_reading_nothing(redis_url):
    away = f"redis://127.0.0.1:{free_port()}/0"

    async def go() -> None:
        producer = AsyncProducer([redis_url, away])
        subscription = producer.subscribe()
        for _ in range(2):  # each try fails the same way: never a subscription that waits on nothing
            with pytest.raises(redis.ConnectionError):
                await subscription.get(timeout=1)
        await producer.close()

    asyncio.run(asyncio.wait_for(go(), 60))
