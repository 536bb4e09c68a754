"""``AsyncProducer``: the asyncio twin of ``Producer`` (redis.asyncio), for async web backends.

Jobs are written exactly as RQ writes them: RQ's own ``Queue.enqueue_many`` runs against a
recording pipeline on an unconnected client, and the commands it queued are replayed on the async
connection in one round trip. Results come from RQ's result stream (XREAD), as in ``Producer``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
from rq.job import Job
from rq.results import Result

from .cancel import CANCELED_ERROR, cancel
from .client import ImageInput, JobOptions, Producer, final_result
from .errors import JobFailed, JobTimeout, QueueFull, RedisFull
from .feed import AsyncResultFeed
from .groupcursor import DEFAULT_BLOCK_MS, GroupCursor, default_consumer
from .wire.jobs import DEFAULT_QUEUE, ProtocolError, image_list, image_source
from .wire.keys import results_stream
from .wire.results import validate_result
from .wire.serializer import SerializationError, loads


class AsyncProducer:
    """``await producer.classify(image)``; the same methods as ``Producer``, as coroutines."""

    def __init__(self, redis_url: str = "redis://localhost:6379/0", queue: str = DEFAULT_QUEUE, *,
                 connection: aioredis.Redis | None = None, options: JobOptions | None = None) -> None:  # fmt: skip
        self.connection = connection or aioredis.Redis.from_url(redis_url)
        self._url = redis_url  # for cancel, which runs RQ's own (synchronous) Job.cancel in a thread
        self.options = options or JobOptions()
        # An unconnected sync client: RQ builds the jobs on it, nothing is sent through it.
        self._recorder = Producer(queue=queue, connection=redis.Redis(host="unused.invalid"), options=self.options)
        self._recorder.queue.redis_server_version = (7, 0, 0)
        self.queue_name, self.channel = queue, self._recorder.channel

    async def enqueue(self, image: ImageInput | None = None, *, image_url: str | None = None,
                      job_id: str | None = None, meta: dict | None = None,
                      deadline_s: float | None = None) -> str:  # fmt: skip
        """Enqueue one image, or a job by reference (``image_url``); return its job id (see ``Producer.enqueue``)."""
        source = image_source(image, image_url)
        return (await self.enqueue_many([source], job_ids=[job_id], metas=[meta], deadline_s=deadline_s))[0]

    async def enqueue_many(self, images: Iterable[ImageInput] = (), *, image_urls: Iterable[str] | None = None,
                           job_ids: Iterable[str | None] | None = None,
                           metas: Iterable[dict | None] | None = None,
                           deadline_s: float | None = None) -> list[str]:  # fmt: skip
        """Enqueue many images in one round trip (more for caller ids and the queue limit); caller-chosen
        ids are created only if absent, atomically (WATCH, as in ``Producer.enqueue_many``)."""
        images = image_list(images, image_urls)
        ids = list(job_ids) if job_ids is not None else [None] * len(images)
        meta_list = list(metas) if metas is not None else None
        chosen = [i for i in ids if i is not None]
        async with self.connection.pipeline() as pipe:
            while True:
                try:
                    if chosen:
                        await pipe.watch(*(Job.key_for(i) for i in chosen))
                    existing = await self._existing(chosen)
                    await self._check_room(len(images) - len(existing))
                    pipe.multi()
                    recorder = self._recorder.connection.pipeline()
                    fresh = self._recorder.record(recorder, images, ids, meta_list, deadline_s, existing)
                    for args, options in recorder.command_stack:
                        pipe.execute_command(*args, **options)
                    await pipe.execute()
                    return fresh
                except redis.WatchError:  # another producer created one of these ids meanwhile: look again
                    continue
                except redis.OutOfMemoryError as exc:
                    raise RedisFull(self.queue_name, len(images), str(exc)) from exc

    async def _existing(self, chosen: list[str]) -> set[str]:
        if not chosen:
            return set()
        found = await asyncio.gather(*(self.connection.exists(Job.key_for(i)) for i in chosen))
        return {i for i, hit in zip(chosen, found) if hit}

    async def _check_room(self, adding: int) -> None:
        limit = self.options.max_queue_length
        if limit is not None and adding > 0:
            length = await self.connection.llen(self._recorder.queue.key)
            if length + adding > limit:
                raise QueueFull(self.queue_name, length, adding, limit)

    async def result(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a job's final result; raise ``JobFailed`` or ``JobTimeout``."""
        deadline = time.monotonic() + timeout
        key, last_id = Result.get_key(job_id), "0-0"
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise JobTimeout(job_id, timeout)
            response = await self.connection.xread({key: last_id}, block=min(left_ms, 1000))
            for result_id, payload in response[0][1] if response else []:
                last_id = result_id
                final = final_result(job_id, result_id, payload)
                if final is not None:
                    return final
            if not response and await self.connection.hget(Job.key_for(job_id), "status") == b"canceled":
                raise JobFailed(job_id, dict(CANCELED_ERROR))  # canceled before it ran: no result will come

    async def classify(self, image: ImageInput, timeout: float = 30.0, *, meta: dict | None = None) -> dict:
        """Enqueue one image and wait for its result."""
        return await self.result(await self.enqueue(image, meta=meta), timeout=timeout)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Every result published on the channel, as it arrives (de-duplicate on ``job_id``)."""
        pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    try:
                        result = validate_result(loads(message["data"]))
                    except (SerializationError, ProtocolError):
                        continue
                    yield result
        finally:
            await pubsub.aclose()

    def results(self, group: str, consumer: str | None = None, start: str = "$", claim_idle_s: float = 30,
                block_ms: int = DEFAULT_BLOCK_MS) -> AsyncResultFeed:  # fmt: skip
        """The durable feed read through ``group``, as ``async for r in producer.results(group=...)``: the
        same semantics as ``Producer.results``, except that the group is created on the first read, or by
        ``await feed.open()`` (do that before enqueuing when ``start="$"``)."""
        cursor = GroupCursor(results_stream(self.queue_name), group, consumer or default_consumer(), start=start,
                             claim_idle_s=claim_idle_s, block_ms=block_ms)  # fmt: skip
        return AsyncResultFeed(self.connection, cursor)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job with RQ's semantics (``Producer.cancel``); True if canceled now."""
        def run() -> bool:
            sync = redis.Redis.from_url(self._url)
            try:
                return cancel(sync, job_id)
            finally:
                sync.close()

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        """Close the Redis connections."""
        await self.connection.aclose()
