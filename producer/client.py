"""``Producer``: what a web backend uses to submit images and read results (no torch here)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.results import Result

from .cache import ProducerCache
from .cancel import cancel, canceled_before_running
from .errors import JobFailed, JobTimeout, QueueFull, RedisFull
from .feed import ResultFeed
from .groupcursor import DEFAULT_BLOCK_MS, GroupCursor, default_consumer
from .jobdata import PlainDataJob
from .results import Subscription, final_result
from .wire.jobs import DEFAULT_QUEUE, TASK_NAME, ImageRef, image_list, image_source, job_kwargs
from .wire.keys import results_channel, results_stream
from .wire.serializer import MsgpackSerializer

log = logging.getLogger(__name__)

ImageInput = bytes | bytearray | str | os.PathLike | ImageRef  # an ImageRef: a job by reference (image_url)


@dataclass(frozen=True)
class JobOptions:
    """How jobs are enqueued; units in names."""

    job_timeout_s: int = 300
    result_ttl_s: int = 3600
    failure_ttl_s: int = 86400
    retries: int = 2
    max_queue_length: int | None = None  # enqueue raises QueueFull past this many waiting jobs
    deadline_s: float | None = None  # default per-job deadline, seconds from enqueue
    compress_data: bool = False  # zlib-compress job data as RQ does by default (images do not shrink: slower)


def read_image(image: ImageInput) -> bytes:
    """Bytes as they are; a path is read from disk."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    return Path(image).read_bytes()


class Producer:
    """Submit images to the classify queue and read their results.

    ``redis_url`` may carry credentials and ``rediss://`` for TLS. Jobs are RQ jobs (msgpack
    serializer, function ``worker.tasks.classify``) with an RQ ``Retry`` so that the jobs of a
    worker that died run again.
    """

    def __new__(cls, redis_url: str = "redis://localhost:6379/0", *args: Any, **kwargs: Any) -> Producer:
        """A URL listing several Redis servers (``redis://a,redis://b``) gives a ``ShardedProducer``."""
        if cls is Producer and "," in redis_url:
            from .shards import ShardedProducer

            return super().__new__(ShardedProducer)
        return super().__new__(cls)

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        queue: str = DEFAULT_QUEUE,
        *,
        connection: redis.Redis | None = None,
        options: JobOptions | None = None,
    ) -> None:
        self.connection = connection or redis.Redis.from_url(redis_url)
        self.options = options or JobOptions()
        job_class = Job if self.options.compress_data else PlainDataJob
        self.queue = Queue(queue, connection=self.connection, serializer=MsgpackSerializer, job_class=job_class)
        self.channel = results_channel(queue)
        self.cache = ProducerCache()  # hits and misses of enqueue(cache=True): self.cache.hits, .misses

    def _job_data(self, image: ImageInput, job_id: str | None, meta: dict | None, deadline: float | None) -> Any:
        if isinstance(image, ImageRef):  # a job by reference: the worker fetches image_url
            data, name = image, image.url
        else:
            data = read_image(image)
            # An explicit description: RQ would otherwise build one from repr() of the whole image.
            name = os.fspath(image) if isinstance(image, str | os.PathLike) else f"{len(data)} bytes"
        opts = self.options
        return Queue.prepare_data(
            TASK_NAME,
            kwargs=job_kwargs(data, meta, deadline),
            timeout=opts.job_timeout_s,
            result_ttl=opts.result_ttl_s,
            failure_ttl=opts.failure_ttl_s,
            description=f"classify {name}",
            job_id=job_id,
            retry=Retry(max=opts.retries) if opts.retries > 0 else None,
        )

    def enqueue(self, image: ImageInput | None = None, *, image_url: str | None = None, job_id: str | None = None,
                meta: dict | None = None, deadline_s: float | None = None, cache: bool = False) -> str:  # fmt: skip
        """Enqueue one image (bytes or a path), or a job by reference (``image_url``: the worker fetches it, when its
        ``--fetch-allow`` permits); return its job id.

        With a caller-chosen ``job_id`` the call is idempotent: a job that already exists is kept.
        ``deadline_s``: a job still waiting this many seconds after now is answered ``expired``
        without being classified. Raises ``QueueFull`` past ``JobOptions.max_queue_length``.
        ``cache=True``: a photo the workers classified before (same bytes, same model version, see
        ``producer.cache``) is answered from the result cache without queueing; ``result()`` of the id
        returned answers at once, in this process.
        """
        if cache and image is not None and job_id is None:
            hit = self.cache.lookup(self.connection, self.queue.name, read_image(image), meta)
            if hit is not None:
                return hit
        source = image_source(image, image_url)
        return self.enqueue_many([source], job_ids=[job_id], metas=[meta], deadline_s=deadline_s)[0]

    def enqueue_many(
        self,
        images: Iterable[ImageInput] = (),
        *,
        image_urls: Iterable[str] | None = None,
        job_ids: Iterable[str | None] | None = None,
        metas: Iterable[dict | None] | None = None,
        deadline_s: float | None = None,
    ) -> list[str]:
        """Enqueue many images in one round trip (more to check caller-chosen ids and the queue limit).

        Caller-chosen ids are created only if absent, atomically: their keys are WATCHed from the
        check to the write, so two producers racing on one id leave one job (the first to write);
        the loser sees it exists and keeps it. ``image_urls``: jobs by reference instead of ``images`` (to mix
        the two, pass ``ImageRef(url)`` among ``images``)."""
        images = image_list(images, image_urls)
        ids = list(job_ids) if job_ids is not None else [None] * len(images)
        meta_list = list(metas) if metas is not None else [None] * len(images)
        if not len(images) == len(ids) == len(meta_list):
            raise ValueError("images, job_ids and metas must have the same length")
        chosen = [job_id for job_id in ids if job_id is not None]
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    if chosen:
                        pipe.watch(*(Job.key_for(job_id) for job_id in chosen))
                    existing = self._existing(chosen)
                    self._check_room(len(images) - len(existing))
                    pipe.multi()
                    recorded = self.record(pipe, images, ids, meta_list, deadline_s, existing)
                    pipe.execute()
                    return recorded
                except redis.WatchError:  # another producer created one of these ids meanwhile: look again
                    log.info("a caller-chosen job id was created concurrently; checking again")
                except redis.OutOfMemoryError as exc:
                    raise RedisFull(self.queue.name, len(images), str(exc)) from exc

    def record(self, pipe: Any, images: list[ImageInput], ids: list[str | None], metas: list[dict | None] | None,
               deadline_s: float | None, existing: set[str]) -> list[str]:  # fmt: skip
        """Queue RQ's commands for these jobs on ``pipe`` (not executed); return every job's id."""
        metas = metas if metas is not None else [None] * len(images)
        after = deadline_s if deadline_s is not None else self.options.deadline_s
        deadline = time.time() + after if after is not None else None
        datas = [
            self._job_data(image, job_id, meta, deadline)
            for image, job_id, meta in zip(images, ids, metas)
            if job_id is None or job_id not in existing
        ]
        jobs = self.queue.enqueue_many(datas, pipeline=pipe) if datas else []
        fresh = iter(job.id for job in jobs)
        return [job_id if job_id in existing else next(fresh) for job_id in ids]

    def _check_room(self, adding: int) -> None:
        limit = self.options.max_queue_length
        if limit is None or adding <= 0:
            return
        length = self.connection.llen(self.queue.key)
        if length + adding > limit:
            raise QueueFull(self.queue.name, length, adding, limit)

    def _existing(self, chosen: list[str]) -> set[str]:
        if not chosen:
            return set()
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in chosen:
                pipe.exists(Job.key_for(job_id))
            found = pipe.execute()
        return {job_id for job_id, hit in zip(chosen, found) if hit}

    def result(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a job's final result; raise ``JobFailed`` or ``JobTimeout``.

        Reads RQ's durable result stream (XREAD BLOCK), so there is no pub/sub race.
        """
        if job_id in self.cache.answers:  # answered from the result cache by this producer
            return self.cache.answers.pop(job_id)
        deadline = time.monotonic() + timeout
        key, last_id = Result.get_key(job_id), "0-0"
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                detail = "" if Job.exists(job_id, self.connection) else " (no such job)"
                raise JobTimeout(job_id, timeout, detail)
            try:  # short blocks: a client's socket timeout (redis-py's default is 5 s) must not cut one off
                response = self.connection.xread({key: last_id}, block=min(left_ms, 1000))
            except (redis.ConnectionError, redis.TimeoutError):  # Redis restarting: wait, then read again
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            for result_id, payload in (response[0][1] if response else []):
                last_id = result_id
                final = final_result(job_id, result_id, payload)
                if final is not None:
                    return final
            if not response and (error := canceled_before_running(self.connection, job_id)):
                raise JobFailed(job_id, error)  # canceled before it ran: no result will come

    def cancel(self, job_id: str) -> bool:
        """Cancel a job, with RQ's semantics (see ``producer.cancel``); True if canceled now."""
        return cancel(self.connection, job_id)

    def classify(self, image: ImageInput, timeout: float = 30.0, *, meta: dict | None = None,
                 cache: bool = False) -> dict:  # fmt: skip
        """Enqueue one image and wait for its result (``cache=True``: see ``enqueue``)."""
        return self.result(self.enqueue(image, meta=meta, cache=cache), timeout=timeout)

    def subscribe(self) -> Subscription:
        """Subscribe to the results channel now; iterate the returned object for results."""
        return Subscription(self.connection, self.channel)

    def results(self, group: str, consumer: str | None = None, start: str = "$", claim_idle_s: float = 30,
                block_ms: int = DEFAULT_BLOCK_MS) -> ResultFeed:  # fmt: skip
        """Every result from the durable feed ``<queue>:results:stream``, read as consumer ``consumer``
        (default ``host:pid``) of ``group``, at least once (de-duplicate on ``job_id``).

        The group is created now, at ``start``, if it does not exist (``"$"``: results from now on;
        ``"0"``: all the feed still holds). An entry is acknowledged when the next one is asked for (or on
        ``feed.ack()``); entries this consumer name left pending come first, and entries other
        consumers left pending longer than ``claim_idle_s`` are claimed and delivered again.
        ``feed.get(timeout_s)`` waits at most that long (None when nothing came)."""
        cursor = GroupCursor(results_stream(self.queue.name), group, consumer or default_consumer(), start=start,
                             claim_idle_s=claim_idle_s, block_ms=block_ms)  # fmt: skip
        return ResultFeed(self.connection, cursor).open()

    def close(self) -> None:
        """Close the Redis connections."""
        self.connection.close()
