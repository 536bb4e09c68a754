"""``Producer``: what a web backend uses to submit images and read results (no torch here)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from .cancel import CancelOutcome
from .channel import Subscription, subscribe
from .connections import close_sentinels_sync
from .connections import connect as connect_sync
from .core import ProducerCore
from .drivers import SyncDriver
from .feed import ResultFeed
from .groupcursor import DEFAULT_BLOCK_MS
from .jobdata import ImageInput, JobOptions
from .shards import Shard, open_shards
from .wire.jobs import DEFAULT_QUEUE

DEFAULT_URL = "redis://localhost:6379/0"


class Producer:
    """Submit images to the classify queue and read their results, on one Redis server or several (shards).

    ``redis_url``: one URL, a comma-separated list, or a list of URLs; each may carry credentials and
    ``rediss://`` for TLS. Each URL is a shard (``producer.shards``: a job's shard is a stable hash of
    its id). ``connect(url)`` makes each shard's client (default: ``producer.connections.connect``, Sentinel URLs too);
    ``connection`` is the client of a single shard, given ready-made. Jobs are RQ jobs (msgpack
    serializer, function ``worker.tasks.classify``) with an RQ ``Retry`` so that the jobs of a worker
    that died run again. ``AsyncProducer`` has the same surface on asyncio.
    """

    def __init__(
        self,
        redis_url: str | Sequence[str] = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        *,
        connection: redis.Redis | None = None,
        connect: Callable[[str], redis.Redis] = connect_sync,
        options: JobOptions | None = None,
    ) -> None:
        self.shards: list[Shard[redis.Redis]] = open_shards(redis_url, connection, connect)
        self.names = [shard.name for shard in self.shards]
        self.options = options or JobOptions()
        self.core = ProducerCore(self.names, queue, self.options)
        self.queue, self.channel = self.core.queue, self.core.queue.channel
        self.cache = self.core.cache  # hits and misses of enqueue(cache=True): self.cache.hits, .misses
        self._driver = SyncDriver([shard.connection for shard in self.shards])
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()

    @property
    def connection(self) -> redis.Redis:
        """The client of the one shard (with several, each has its own: ``shards[i].connection``)."""
        if len(self.shards) > 1:
            raise AttributeError(f"this producer has {len(self.shards)} shards: use producer.shards[i].connection")
        return self.shards[0].connection

    def shard_for(self, job_id: str) -> Shard[redis.Redis]:
        """The shard that holds (or will hold) ``job_id``."""
        return self.shards[self.core.shard_of(job_id)]

    def enqueue(
        self,
        image: ImageInput | None = None,
        *,
        image_url: str | None = None,
        job_id: str | None = None,
        meta: dict | None = None,
        deadline_s: float | None = None,
        cache: bool = False,
    ) -> str:
        """Enqueue one image (bytes or a path), or a job by reference (``image_url``: the worker fetches it,
        when its ``--fetch-allow`` permits); return its job id.

        With a caller-chosen ``job_id`` the call is idempotent: a job that already exists is kept.
        ``deadline_s``: a job still waiting this many seconds after now is answered ``expired``
        without being classified. Raises ``QueueFull`` past ``JobOptions.max_queue_length``,
        ``RedisFull`` when Redis is out of memory, ``ShardUnavailable`` when the job's shard cannot be
        reached. ``cache=True``: a photo the workers classified before (same bytes, same model version,
        see ``producer.cache``) is answered from the result cache without queueing; ``result()`` of the
        id returned answers at once, in this process. On a miss the job is queued asking the workers to
        cache its result (workers before this version cached every result; ``--cache-for all`` still does).
        """
        return self._driver.run(
            self.core.enqueue(image, image_url=image_url, job_id=job_id, meta=meta, deadline_s=deadline_s, cache=cache)
        )

    def enqueue_many(
        self,
        images: Iterable[ImageInput] = (),
        *,
        image_urls: Iterable[str] | None = None,
        job_ids: Iterable[str | None] | None = None,
        metas: Iterable[dict | None] | None = None,
        deadline_s: float | None = None,
        cache: bool = False,
    ) -> list[str]:
        """Enqueue many images in one round trip per shard (more to check caller-chosen ids and the queue
        limit); atomic per shard. ``image_urls``: jobs by reference instead of ``images`` (to mix the two,
        pass ``ImageRef(url)`` among ``images``). Caller-chosen ids are created only if absent, atomically:
        two producers racing on one id leave one job. ``ShardUnavailable`` says which ids were written.
        ``cache=True``: the workers write these jobs' results to the result cache, so that later
        ``enqueue(..., cache=True)`` of the same photos are answered from it (nothing is looked up here)."""
        return self._driver.run(
            self.core.enqueue_many(
                images, image_urls=image_urls, job_ids=job_ids, metas=metas, deadline_s=deadline_s, cache=cache
            )
        )

    def result(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a job's final result; raise ``JobFailed`` or ``JobTimeout``.

        Reads RQ's durable result stream (XREAD BLOCK), so there is no pub/sub race.
        """
        return self._driver.run(self.core.result(job_id, timeout))

    def classify(
        self, image: ImageInput, timeout: float = 30.0, *, meta: dict | None = None, cache: bool = False
    ) -> dict[str, Any]:
        """Enqueue one image and wait for its result (``cache=True``: see ``enqueue``)."""
        return self._driver.run(self.core.classify(image, timeout, meta, cache))

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job, with RQ's semantics, in one atomic step (see ``producer.cancel``). What it did:
        ``CANCELED`` (it had not started: it never will), ``CANCELING`` (it was running: it ends ``ok: false``,
        ``canceled``), ``ALREADY_CANCELED`` or ``ALREADY_FINAL`` (nothing changed). True as a bool when it
        canceled the job now. ``JobNotFound`` if there is no such job."""
        return self._driver.run(self.core.cancel(job_id))

    def live_workers(self) -> dict[str, int | None]:
        """How many live workers serve this queue, per shard name (None: that shard could not be asked)."""
        return self._driver.run(self.core.live_workers())

    def subscribe(self) -> Subscription:
        """Subscribe to the results channel (of every shard) now; iterate the returned object for results."""
        subscription = subscribe([shard.connection for shard in self.shards], self.channel)
        self._subscriptions.add(subscription)
        return subscription

    def results(
        self,
        group: str,
        consumer: str | None = None,
        start: str = "$",
        claim_idle_s: float = 30,
        block_ms: int = DEFAULT_BLOCK_MS,
    ) -> ResultFeed:
        """Every result from the durable feed ``<queue>:results:stream`` (of every shard), read as consumer
        ``consumer`` (default ``host:pid``) of ``group``, at least once (de-duplicate on ``job_id``).

        The group is created now, at ``start``, if it does not exist (``"$"``: results from now on;
        ``"0"``: all the feed still holds). An entry is acknowledged when the next one is asked for (or on
        ``feed.ack()``); entries this consumer name left pending come first, and entries other
        consumers left pending longer than ``claim_idle_s`` are claimed and delivered again.
        ``feed.get(timeout_s)`` waits at most that long (None when nothing came)."""
        return ResultFeed(self._driver, self.core.cursors(group, consumer, start, claim_idle_s, block_ms)).open()

    def close(self) -> None:
        """End the subscriptions, close the Redis connections."""
        for subscription in list(self._subscriptions):
            subscription.close()
        for shard in self.shards:
            shard.connection.close()
        close_sentinels_sync(self.shards)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
