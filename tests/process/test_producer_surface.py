"""``Producer`` and ``AsyncProducer``, one behaviour suite: every test runs on the sync producer and on the
asyncio one (driven from here by a small adapter), on one Redis server and on two shards (two real
redis-server processes). What a worker writes (cache entries, feed entries, channel messages) is
written here as the worker writes it (``producer.wire``); one test runs a real worker for results."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from rq.job import Job

from bench.devserver import RedisServer, free_port
from producer import (
    AsyncProducer,
    CancelOutcome,
    ImageTooLarge,
    JobFailed,
    JobNotFound,
    JobOptions,
    JobTimeout,
    Producer,
    QueueFull,
    ShardUnavailable,
)
from producer.shards import rendezvous, shard_name
from producer.wire import keys
from producer.wire.cache import announcement, compact, digest, key_for
from producer.wire.jobs import MAX_META_BYTES, TASK_NAME, ProtocolError
from producer.wire.results import make_result
from producer.wire.serializer import MsgpackSerializer, dumps, loads

from ..conftest import image_bytes, wait_for_workers

QUEUE_KEY, STREAM, CHANNEL = keys.queue("classify"), keys.results_stream("classify"), keys.results_channel("classify")
ANNOUNCED = announcement("tiny@7", "fp32", "cpu", 5, ttl_s=600)


class AsyncFeed:
    """An ``AsyncResultFeed`` read from sync code."""

    def __init__(self, loop: asyncio.AbstractEventLoop, feed: Any) -> None:
        self.loop, self.feed = loop, loop.run_until_complete(feed.open())  # Producer.results opens at once too

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        return self.loop.run_until_complete(self.feed.get(timeout_s))

    def ack(self) -> None:
        self.loop.run_until_complete(self.feed.ack())


class AsyncSubscription:
    """``AsyncProducer.subscribe()`` read from sync code; subscribed on every shard when built, like ``Producer``'s."""

    def __init__(self, loop: asyncio.AbstractEventLoop, producer: AsyncProducer) -> None:
        self.loop, self.stream = loop, producer.subscribe()
        self.pending = self._next()
        checks = [redis.Redis.from_url(shard.url) for shard in producer.shards]
        deadline = time.monotonic() + 10
        while not all(check.pubsub_numsub(producer.channel)[0][1] for check in checks):
            assert time.monotonic() < deadline, "the subscription never started"
            loop.run_until_complete(asyncio.sleep(0.01))

    def _next(self) -> asyncio.Task:
        async def step() -> dict[str, Any]:
            return await self.stream.__anext__()

        return self.loop.create_task(step())

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        done, _ = self.loop.run_until_complete(asyncio.wait({self.pending}, timeout=timeout))
        if not done:
            return None
        result, self.pending = self.pending.result(), self._next()
        return result

    def close(self) -> None:
        self.pending.cancel()
        self.loop.run_until_complete(asyncio.gather(self.pending, return_exceptions=True))
        self.loop.run_until_complete(self.stream.aclose())


class AsyncAdapter:
    """``AsyncProducer`` with ``Producer``'s sync surface: each coroutine runs to its end on this adapter's
    event loop (asyncio.run's job; one loop for all calls, since an asyncio client keeps to its loop)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.producer = AsyncProducer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.producer, name)
        if not inspect.iscoroutinefunction(value):
            return value
        return lambda *args, **kwargs: self.loop.run_until_complete(value(*args, **kwargs))

    def results(self, *args: Any, **kwargs: Any) -> AsyncFeed:
        return AsyncFeed(self.loop, self.producer.results(*args, **kwargs))

    def subscribe(self) -> AsyncSubscription:
        return AsyncSubscription(self.loop, self.producer)

    def close(self) -> None:
        self.loop.run_until_complete(self.producer.close())
        self.loop.close()


@pytest.fixture(scope="module")
def second_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(binary=redis_server.binary).start()
    yield server
    server.stop()


@pytest.fixture(params=[1, 2], ids=["one-server", "two-shards"])
def urls(request: pytest.FixtureRequest, redis_url: str, second_server: RedisServer) -> list[str]:
    """The shards' URLs, each server flushed."""
    if request.param == 1:
        return [redis_url]
    redis.Redis.from_url(second_server.url).flushall()
    return [redis_url, second_server.url]


@pytest.fixture
def conns(urls: list[str]) -> Iterator[list[redis.Redis]]:
    clients = [redis.Redis.from_url(url) for url in urls]
    yield clients
    for client in clients:
        client.close()


@pytest.fixture(params=["sync", "async"])
def make_producer(request: pytest.FixtureRequest, urls: list[str]) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_producer(**kwargs)`` on the shards (or on ``shards=[...]``), sync or async; closed after."""
    made: list[Any] = []

    def make(shards: list[str] | None = None, **kwargs: Any) -> Any:
        producer = (Producer if request.param == "sync" else AsyncAdapter)(shards or urls, **kwargs)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        producer.close()


def home(producer: Any, conns: list[redis.Redis], job_id: str) -> redis.Redis:
    """The server a job's id hashes to."""
    return conns[rendezvous(producer.names, job_id)]


def fetch(conn: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)


def queued(conns: list[redis.Redis]) -> list[int]:
    return [conn.llen(QUEUE_KEY) for conn in conns]


def test_jobs_are_rq_jobs_on_the_shard_their_id_hashes_to_and_nowhere_else(make_producer, urls, conns):
    producer = make_producer()
    photo = image_bytes("cat.jpg")
    ids = producer.enqueue_many([photo] * 20, metas=[{"n": n} for n in range(20)])
    assert len(set(ids)) == 20
    for n, job_id in enumerate(ids):
        job = fetch(home(producer, conns, job_id), job_id)
        assert job.func_name == TASK_NAME and job.kwargs == {"image": photo, "meta": {"n": n}}
        assert job.retries_left == 2 and job.origin == "classify"
        assert sum(conn.exists(Job.key_for(job_id)) for conn in conns) == 1
        assert producer.shard_for(job_id).url == urls[rendezvous(producer.names, job_id)]
    assert sum(queued(conns)) == 20 and min(queued(conns)) > 0  # spread over every shard


def test_jobs_by_reference_are_enqueued_on_their_shards(make_producer, conns):
    producer = make_producer()
    refs = [f"https://images.example/ad-{n}.jpg" for n in range(12)]
    ids = producer.enqueue_many(image_urls=refs)
    one = producer.enqueue(image_url="https://images.example/one.jpg", meta={"ad": 1})
    for url, job_id in zip([*refs, "https://images.example/one.jpg"], [*ids, one], strict=True):
        job = fetch(home(producer, conns, job_id), job_id)
        assert job.kwargs["image_url"] == url and "image" not in job.kwargs and job.description == f"classify {url}"
    assert fetch(home(producer, conns, one), one).kwargs["meta"] == {"ad": 1}
    assert sum(queued(conns)) == 13 and min(queued(conns)) > 0
    with pytest.raises(ProtocolError, match="not both"):
        producer.enqueue_many([b"x"], image_urls=refs)
    with pytest.raises(ProtocolError):
        producer.enqueue(image_url="ftp://images.example/x.jpg")
    assert sum(queued(conns)) == 13


def test_a_caller_chosen_id_is_created_once_on_its_shard(make_producer, conns):
    producer = make_producer()
    assert producer.enqueue(b"one", job_id="ad-1") == "ad-1"
    ids = producer.enqueue_many([b"two", b"three", b"four"], job_ids=["ad-1", "ad-2", None])
    assert ids[:2] == ["ad-1", "ad-2"] and ids[2] not in ("ad-1", "ad-2")
    assert sum(queued(conns)) == 3
    assert fetch(home(producer, conns, "ad-1"), "ad-1").kwargs["image"] == b"one"  # the first one is kept
    with pytest.raises(ValueError, match="more than once"):
        producer.enqueue_many([b"a", b"b"], job_ids=["ad-3", "ad-3"])
    assert sum(queued(conns)) == 3


def test_the_cache_answers_a_hit_from_any_shard_without_queueing_and_queues_a_miss(make_producer, conns):
    producer = make_producer()
    photo, other = image_bytes("cat.jpg"), image_bytes("coffee.jpg")
    numbers = make_result("x", model="tiny@7", worker="w", timings_ms={}, meta={}, topk=[("class3", 0.9)])
    for conn in conns:  # every shard's workers announce what they run
        conn.set(keys.announcement("classify"), ANNOUNCED)
    conns[-1].set(key_for(digest(photo), loads(ANNOUNCED)), compact(numbers))  # classified on the last shard
    job_id = producer.enqueue(photo, cache=True, meta={"ad": 1})
    answer = producer.result(job_id, timeout=1)
    assert answer["cached"] is True and answer["label"] == "class3" and answer["job_id"] == job_id
    assert answer["meta"] == {"ad": 1} and answer["model"] == "tiny@7"
    assert producer.classify(photo, timeout=1, cache=True)["cached"] is True
    assert producer.cache.hits == 2 and producer.cache.misses == 0 and sum(queued(conns)) == 0
    missed = producer.enqueue(other, cache=True)
    assert producer.cache.misses == 1 and fetch(home(producer, conns, missed), missed).kwargs["image"] == other
    producer.enqueue(photo)  # without cache=True the cache is not read
    producer.enqueue(photo, cache=True, job_id="ad-7")  # nor with a caller-chosen id (the job must exist)
    assert producer.cache.hits == 2 and sum(queued(conns)) == 3


def test_cancel_works_on_the_jobs_shard_and_result_does_not_hang(make_producer, conns):
    producer = make_producer()
    ids = producer.enqueue_many([b"img"] * 6)
    victim = ids[-1]
    assert producer.cancel(victim) is CancelOutcome.CANCELED
    assert producer.cancel(victim) is CancelOutcome.ALREADY_CANCELED and not producer.cancel(victim)
    where = home(producer, conns, victim)
    assert where.hget(Job.key_for(victim), "status") == b"canceled"
    assert victim.encode() not in where.lrange(QUEUE_KEY, 0, -1) and sum(queued(conns)) == 5
    started = time.monotonic()
    with pytest.raises(JobFailed) as failed:
        producer.result(victim, timeout=60)
    assert failed.value.error["type"] == "canceled" and time.monotonic() - started < 5  # at once, not after 60 s
    with pytest.raises(JobNotFound):
        producer.cancel("no-such-job")


def test_the_durable_feed_reads_every_shard_through_one_group(make_producer, conns):
    producer = make_producer()
    feed = producer.results(group="web", claim_idle_s=60)  # start "$": the group exists on every shard now
    expected = set()
    for n, conn in enumerate(conns):
        for job_id in (f"shard{n}-a", f"shard{n}-b"):
            result = make_result(job_id, model="tiny@7", worker="w", timings_ms={}, meta={})
            conn.xadd(STREAM, {"job_id": job_id, "result": dumps(result)})
            expected.add(job_id)
    seen = []
    for _ in expected:
        result = feed.get(timeout_s=10)
        assert result is not None, f"only {seen} came"
        seen.append(result["job_id"])
    assert sorted(seen) == sorted(expected)
    assert sum(conn.xpending(STREAM, "web")["pending"] for conn in conns) == 1  # the last one, in hand
    feed.ack()
    assert all(conn.xpending(STREAM, "web")["pending"] == 0 for conn in conns)
    assert feed.get(timeout_s=0.3) is None


def test_subscribe_hears_the_channel_of_every_shard(make_producer, conns):
    producer = make_producer()
    sub = producer.subscribe()
    try:
        conns[0].publish(CHANNEL, b"\xc1 not msgpack")  # skipped
        for n, conn in enumerate(conns):
            conn.publish(CHANNEL, dumps(make_result(f"pub-{n}", model="m@1", worker="w", timings_ms={}, meta={})))
        heard = {sub.get(timeout=10)["job_id"] for _ in conns}
        assert heard == {f"pub-{n}" for n in range(len(conns))}
        assert sub.get(timeout=0.2) is None
    finally:
        sub.close()


def test_the_same_errors_for_the_same_mistakes(make_producer, conns):
    full = make_producer(options=JobOptions(max_queue_length=0))
    with pytest.raises(QueueFull):
        full.enqueue(b"x")
    producer = make_producer()
    metas = [{}] * 7 + [{"blob": "x" * MAX_META_BYTES}]
    with pytest.raises(ProtocolError, match="over the limit"):
        producer.enqueue_many([b"x"] * 8, metas=metas)
    assert sum(queued(conns)) == 0  # checked before anything is sent: no shard got a job
    with pytest.raises(ValueError, match="same length"):
        producer.enqueue_many([b"x", b"y"], job_ids=["only-one"])
    with pytest.raises(JobTimeout, match="no such job"):
        producer.result("never-enqueued", timeout=0.2)
    with pytest.raises(JobTimeout) as waited:
        producer.result(producer.enqueue(b"x"), timeout=0.2)
    assert "no such job" not in str(waited.value)


def test_a_shard_that_cannot_be_reached_is_named_with_the_ids_written_elsewhere(make_producer, urls, conns):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    producer = make_producer(shards=[*urls, dead])
    ids = sorted((f"ad-{n}" for n in range(24)), key=lambda i: rendezvous(producer.names, i) != len(urls))
    with pytest.raises(ShardUnavailable) as down:  # the dead shard's jobs come first in the call
        producer.enqueue_many([b"x"] * 24, job_ids=ids)
    error, lost = down.value, [i for i in ids if rendezvous(producer.names, i) == len(urls)]
    assert isinstance(error, redis.ConnectionError) and error.shard == shard_name(dead)
    assert lost and error.not_enqueued == lost and error.shards == [shard_name(dead)] and error.ids == ids
    assert error.enqueued == [i for i in ids if i not in lost]  # the shards that are up got theirs
    for job_id in ids:
        assert sum(conn.exists(Job.key_for(job_id)) for conn in conns) == (job_id in error.enqueued)


def test_results_come_back_from_every_shard(make_producer, urls, conn, start_worker):
    start_worker(*[arg for url in urls[1:] for arg in ("--redis-url", url)])
    wait_for_workers(conn)
    producer = make_producer()
    ids = producer.enqueue_many([image_bytes("cat.jpg")] * 6, metas=[{"n": n} for n in range(6)])
    for n, job_id in enumerate(ids):
        result = producer.result(job_id, timeout=60)
        assert result["ok"] and result["job_id"] == job_id and result["meta"] == {"n": n}
    assert producer.classify(image_bytes("coffee.jpg"), timeout=60, meta={"k": 1})["meta"] == {"k": 1}
    with pytest.raises(JobFailed) as failed:
        producer.result(producer.enqueue(b"not an image"), timeout=60)
    assert failed.value.error["type"] == "unsupported_image"


def test_an_image_over_the_size_limit_is_refused_at_enqueue_and_nothing_is_sent(make_producer, conns, tmp_path):
    producer = make_producer()
    big = b"\x89PNG\r\n\x1a\n" + bytes(27 * 1024 * 1024)  # a 27 MB PNG: past the workers' 20 MiB
    with pytest.raises(ImageTooLarge) as refused:
        producer.enqueue(big)
    assert refused.value.error["type"] == "image_too_large" and isinstance(refused.value, ProtocolError)
    path = tmp_path / "huge.png"
    path.write_bytes(big)
    with pytest.raises(ImageTooLarge):
        producer.enqueue_many([b"small", path])  # one too large: none is sent
    with pytest.raises(ImageTooLarge):
        producer.classify(big, timeout=1, cache=True)
    assert sum(queued(conns)) == 0 and not any(conn.keys("rq:job:*") for conn in conns)
    small = make_producer(options=JobOptions(max_image_bytes=4))
    with pytest.raises(ImageTooLarge, match="5 bytes, over the limit of 4"):
        small.enqueue(b"12345")
    assert small.enqueue(b"1234")


def test_live_workers_counts_the_workers_serving_the_queue_on_each_shard(make_producer, urls, conns):
    producer = make_producer()
    assert producer.live_workers() == dict.fromkeys(producer.names, 0)
    conns[0].sadd(keys.queue_workers("classify"), keys.worker("alive"), keys.worker("gone"))
    conns[0].hset(keys.worker("alive"), "state", "idle")  # "gone" left its key to expire: not counted
    assert producer.live_workers() == {producer.names[0]: 1} | dict.fromkeys(producer.names[1:], 0)
    dead = make_producer(shards=[*urls, f"redis://127.0.0.1:{free_port()}/0"])
    assert list(dead.live_workers().values())[-1] is None  # a shard that cannot be asked


def test_a_cache_key_of_another_type_is_a_miss_not_an_error(redis_url, conn):
    from producer.wire.cache import announcement, digest, key_for, parse_announcement
    from producer.wire.keys import announcement as announcement_key

    conn.set(announcement_key("classify"), announcement("tiny@7", "fp32", "cpu", 5, 60))
    announced = parse_announcement(conn.get(announcement_key("classify")))
    photo = b"\xff\xd8 not really a photo"
    conn.hset(key_for(digest(photo), announced), "x", "y")  # a hash where a string belongs
    producer = Producer(redis_url)
    job_id = producer.enqueue(photo, cache=True)
    assert not job_id.startswith("cached-") and producer.cache.misses == 1
