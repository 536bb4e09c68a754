"""``AsyncProducer``: ``Producer`` for asyncio web backends, on ``redis.asyncio``: the same surface, as
coroutines, and the same logic (``producer.core``), so the jobs it writes are the jobs RQ writes."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from .cancel import CancelOutcome
from .channel import AsyncSubscription
from .connections import close_sentinels, connect_async
from .core import ProducerCore
from .drivers import AsyncDriver
from .feed import AsyncResultFeed
from .groupcursor import DEFAULT_BLOCK_MS
from .jobdata import ImageInput, JobOptions
from .shards import Shard, open_shards
from .wire.jobs import DEFAULT_QUEUE

DEFAULT_URL = "redis://localhost:6379/0"


class AsyncProducer:
    """``await producer.classify(image)``; the methods of ``Producer``, as coroutines.

    Shards, ``connection`` and ``connect`` as in ``Producer`` (asyncio clients).
    """

    def __init__(
        self,
        redis_url: str | Sequence[str] = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        *,
        connection: aioredis.Redis | None = None,
        connect: Callable[[str], aioredis.Redis] = connect_async,
        options: JobOptions | None = None,
    ) -> None:
        self.shards: list[Shard[aioredis.Redis]] = open_shards(redis_url, connection, connect)
        self.names = [shard.name for shard in self.shards]
        self.options = options or JobOptions()
        self.core = ProducerCore(self.names, queue, self.options)
        self.queue, self.channel = self.core.queue, self.core.queue.channel
        self.cache = self.core.cache  # hits and misses of enqueue(cache=True): self.cache.hits, .misses
        self._driver = AsyncDriver([shard.connection for shard in self.shards])
        self._subscriptions: weakref.WeakSet[AsyncSubscription] = weakref.WeakSet()

    @property
    def connection(self) -> aioredis.Redis:
        """The client of the one shard (with several, each has its own: ``shards[i].connection``)."""
        if len(self.shards) > 1:
            raise AttributeError(f"this producer has {len(self.shards)} shards: use producer.shards[i].connection")
        return self.shards[0].connection

    def shard_for(self, job_id: str) -> Shard[aioredis.Redis]:
        """The shard that holds (or will hold) ``job_id``."""
        return self.shards[self.core.shard_of(job_id)]

    async def enqueue(
        self,
        image: ImageInput | None = None,
        *,
        image_url: str | None = None,
        job_id: str | None = None,
        meta: dict | None = None,
        deadline_s: float | None = None,
        cache: bool = False,
    ) -> str:
        """Enqueue one image, or a job by reference (``image_url``); return its job id (see ``Producer.enqueue``)."""
        return await self._driver.run(
            self.core.enqueue(image, image_url=image_url, job_id=job_id, meta=meta, deadline_s=deadline_s, cache=cache)
        )

    async def enqueue_many(
        self,
        images: Iterable[ImageInput] = (),
        *,
        image_urls: Iterable[str] | None = None,
        job_ids: Iterable[str | None] | None = None,
        metas: Iterable[dict | None] | None = None,
        deadline_s: float | None = None,
        cache: bool = False,
    ) -> list[str]:
        """Enqueue many images in one round trip per shard (see ``Producer.enqueue_many``)."""
        return await self._driver.run(
            self.core.enqueue_many(
                images, image_urls=image_urls, job_ids=job_ids, metas=metas, deadline_s=deadline_s, cache=cache
            )
        )

    async def result(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a job's final result; raise ``JobFailed`` or ``JobTimeout``."""
        return await self._driver.run(self.core.result(job_id, timeout))

    async def classify(
        self, image: ImageInput, timeout: float = 30.0, *, meta: dict | None = None, cache: bool = False
    ) -> dict[str, Any]:
        """Enqueue one image and wait for its result (``cache=True``: see ``Producer.enqueue``)."""
        return await self._driver.run(self.core.classify(image, timeout, meta, cache))

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job in one atomic step (see ``Producer.cancel``): what it did, true if canceled now."""
        return await self._driver.run(self.core.cancel(job_id))

    async def live_workers(self) -> dict[str, int | None]:
        """Live workers serving this queue, per shard (see ``Producer.live_workers``)."""
        return await self._driver.run(self.core.live_workers())

    def subscribe(self) -> AsyncSubscription:
        """Every result published on the channel (of every shard), as it arrives (de-duplicate on ``job_id``).
        ``sub = await producer.subscribe()`` subscribes before it returns (then enqueue: nothing is missed);
        ``async for result in producer.subscribe()`` subscribes at the first read. ``close()`` ends it too."""
        subscription = AsyncSubscription([shard.connection for shard in self.shards], self.channel)
        self._subscriptions.add(subscription)
        return subscription

    def results(
        self,
        group: str,
        consumer: str | None = None,
        start: str = "$",
        claim_idle_s: float = 30,
        block_ms: int = DEFAULT_BLOCK_MS,
    ) -> AsyncResultFeed:
        """The durable feed read through ``group``, as ``async for r in producer.results(group=...)``: the
        same semantics as ``Producer.results``, except that the group is created on the first read, or by
        ``await feed.open()`` (do that before enqueuing when ``start="$"``)."""
        return AsyncResultFeed(self._driver, self.core.cursors(group, consumer, start, claim_idle_s, block_ms))

    async def close(self) -> None:
        """End the subscriptions, close the Redis connections (each, whatever another's close raised)."""
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        await self._driver.close()
        await close_sentinels(self.shards)

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
