"""The producer's logic, shared by ``Producer`` (sync) and ``AsyncProducer`` (asyncio), without I/O:
argument checks, job building, routing by shard, the cache decision, waiting for a result.

Each public method returns a procedure (``producer.ops``): a front end's driver runs it on redis-py's
sync or asyncio clients. A job's shard is the rendezvous hash of its id (``producer.shards``), so ids
are chosen here, before routing (RQ's own format: a UUID4 string).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import redis

from . import tracing
from .cache import ProducerCache
from .cancel import CancelOutcome, cancel_job
from .errors import NotReplicated, ProducerError, QueueFull, RedisFull, ShardRefused, ShardUnavailable
from .groupcursor import GroupCursor, default_consumer
from .jobdata import ImageInput, JobOptions, JobWriter, read_image
from .ops import Batch, Command, Commit, Offload, Procedure, Watch, call, command
from .results import wait_for_result
from .shards import rendezvous
from .wire import keys
from .wire.cache import digest
from .wire.jobs import ImageRef, check_meta, image_list, image_source

log = logging.getLogger(__name__)
OFFLOAD_JOBS = 8  # an enqueue of more jobs is built in a thread by the asyncio producer (RQ's job building ~60 µs each)
OFFLOAD_BYTES = 256 * 1024  # ... or of more image bytes (hashing, packing, copying)


@dataclass(frozen=True)
class QueueRef:
    """The queue a producer writes to (the same name on every shard), and the names derived from it."""

    name: str

    @property
    def key(self) -> str:
        """RQ's list of queued job ids."""
        return keys.queue(self.name)

    @property
    def channel(self) -> str:
        """The best-effort results channel."""
        return keys.results_channel(self.name)

    @property
    def stream(self) -> str:
        """The durable results feed."""
        return keys.results_stream(self.name)


class PlannedJob(NamedTuple):
    """A job of an ``enqueue_many`` call, built before anything is sent (a tuple: one per job, cheap)."""

    id: str
    chosen: bool  # the caller chose the id: the job is created only if absent
    data: Any  # RQ's call data (``Queue.prepare_data``)


def heavy(sources: Sequence[Any]) -> bool:
    """Whether building these jobs may hold an asyncio producer's event loop too long (``Offload``): a file to
    read, more than a few jobs for RQ to build, or large images to hash or pack."""
    if len(sources) > OFFLOAD_JOBS:
        return True
    size = 0
    for source in sources:
        if isinstance(source, str | os.PathLike):
            return True
        size += len(source) if isinstance(source, bytes | bytearray) else 0
    return size > OFFLOAD_BYTES


def read_and_digest(source: ImageInput, max_bytes: int) -> tuple[bytes, str]:
    """An image's bytes (read from disk if a path) and their SHA-256, the result cache's key."""
    photo = read_image(source, max_bytes)
    return photo, digest(photo)


def cut_off(exc: redis.ResponseError) -> bool:
    """A write refused by a primary that is mid-failover (``READONLY``: demoted) or cut off from its replicas
    (``NOREPLICAS``: ``min-replicas-to-write``): nothing was written, another try may succeed."""
    return isinstance(exc, redis.ReadOnlyError) or "NOREPLICAS" in str(exc).split()  # (a pipeline prefixes it)


class ProducerCore:
    """What ``Producer`` and ``AsyncProducer`` do, as procedures; ``names`` are the shards' names, in order."""

    def __init__(self, names: Sequence[str], queue: str, options: JobOptions) -> None:
        self.names, self.queue, self.options = list(names), QueueRef(queue), options
        self.writer = JobWriter(queue, options)
        self.cache = ProducerCache()  # hits and misses of enqueue(cache=True): .hits, .misses

    def shard_of(self, job_id: str) -> int:
        """The index of the shard that holds (or will hold) ``job_id``."""
        return rendezvous(self.names, job_id) if len(self.names) > 1 else 0

    def enqueue(
        self,
        image: ImageInput | None = None,
        *,
        image_url: str | None = None,
        job_id: str | None = None,
        meta: dict | None = None,
        deadline_s: float | None = None,
        cache: bool = False,
    ) -> Procedure[str]:
        """One image or one job by reference; a cache hit (``cache=True``, an image, no caller-chosen id) is
        answered without queueing; with ``cache=True`` a job queued asks for its result to be cached."""
        source = image_source(image, image_url)
        if cache and job_id is None and not isinstance(source, ImageRef):
            check_meta(meta)  # a hit is answered without the job: its meta is checked as a miss's would be
            read = partial(read_and_digest, source, self.options.max_image_bytes)
            source, image_digest = (yield Offload(read)) if heavy([source]) else read()  # a file is read once
            hit = yield from self.cache.lookup(self.queue.name, image_digest, meta, len(self.names))
            if hit is not None:
                return hit
        ids = yield from self.enqueue_many([source], job_ids=[job_id], metas=[meta], deadline_s=deadline_s, cache=cache)
        return ids[0]

    def enqueue_many(
        self,
        images: Iterable[ImageInput] = (),
        *,
        image_urls: Iterable[str] | None = None,
        job_ids: Iterable[str | None] | None = None,
        metas: Iterable[dict | None] | None = None,
        deadline_s: float | None = None,
        cache: bool = False,
    ) -> Procedure[list[str]]:
        """Every job built and checked first (nothing is sent if one is bad), then one transaction per shard.
        ``cache``: the workers write these jobs' results to the result cache (nothing is looked up here).

        A shard that cannot be reached, or refuses (``QueueFull``, ``RedisFull``, ``NotReplicated``), stops only its
        own jobs: the other shards get theirs, and the error raised says which ids were written (``enqueued``)
        and which not (``not_enqueued``). After a connection error the shard is asked once more which of its
        jobs exist (a reply lost after Redis ran the transaction): when all do, and no replicas are waited for,
        the call succeeds."""
        sources = image_list(images, image_urls)
        plan = partial(self.plan, sources, None, job_ids, metas, deadline_s, cache)
        jobs = (yield Offload(plan)) if heavy(sources) else plan()
        by_shard: dict[int, list[PlannedJob]] = {}
        for job in jobs:
            by_shard.setdefault(self.shard_of(job.id), []).append(job)
        down: list[tuple[int, Exception]] = []
        refused: list[QueueFull | NotReplicated | ShardRefused] = []
        missing: set[str] = set()  # ids not known to be written
        for shard, shard_jobs in by_shard.items():
            try:
                yield from self._write(shard, shard_jobs)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                if isinstance(exc, redis.ResponseError) and not cut_off(exc):  # a refusal of that server's own
                    refused.append(ShardRefused(self.names[shard], str(exc)))
                    missing |= {job.id for job in shard_jobs}
                    continue
                written = yield from self._written(shard, shard_jobs)
                lost = {job.id for job in shard_jobs if job.id not in written}
                if self.options.wait_replicas > 0:  # written is not enough: none is known to be on a replica
                    lost = {job.id for job in shard_jobs}  # (enqueued again with the same ids, they wait again)
                missing |= lost
                if lost:  # else only the reply was lost: they are written
                    down.append((shard, exc))
            except (QueueFull, NotReplicated) as exc:  # RedisFull is a QueueFull
                refused.append(exc)
                missing |= set() if isinstance(exc, NotReplicated) else {job.id for job in shard_jobs}
        ids = [job.id for job in jobs]
        if down or refused:
            error, cause = self._failed(ids, missing, down, refused)
            raise error from cause
        return ids

    def _written(self, shard: int, jobs: list[PlannedJob]) -> Procedure[set[str]]:
        """After a connection error: which of the shard's jobs exist now (none known when it cannot be asked)."""
        try:
            found = yield Batch(shard, tuple(command("EXISTS", keys.job(job.id)) for job in jobs))
        except (redis.ConnectionError, redis.TimeoutError):
            return set()
        return {job.id for job, exists in zip(jobs, found, strict=True) if exists}

    def _failed(
        self, ids: list[str], missing: set[str], down: list[tuple[int, Exception]], refused: list[Any]
    ) -> tuple[ProducerError, Exception | None]:
        """The error an ``enqueue_many`` raises (the first unreachable shard's, else the first refusal), with the
        ids written and not written; and its cause."""
        enqueued, not_enqueued = [i for i in ids if i not in missing], [i for i in ids if i in missing]
        if down:
            (first, cause), names = down[0], [self.names[shard] for shard, _ in down]
            error = ShardUnavailable(self.names[first], str(cause), enqueued, not_enqueued, ids=ids, shards=names)
            return error, cause
        error = refused[0]
        error.enqueued, error.not_enqueued = enqueued, not_enqueued
        return error, None

    def plan(
        self,
        images: Iterable[ImageInput],
        image_urls: Iterable[str] | None,
        job_ids: Iterable[str | None] | None,
        metas: Iterable[dict | None] | None,
        deadline_s: float | None,
        cache: bool = False,
    ) -> list[PlannedJob]:
        """The jobs of an ``enqueue_many`` call, checked and built (ids chosen, images read, metas checked)."""
        sources = image_list(images, image_urls)
        ids = list(job_ids) if job_ids is not None else [None] * len(sources)
        meta_list = list(metas) if metas is not None else [None] * len(sources)
        if not len(sources) == len(ids) == len(meta_list):
            raise ValueError("images, job_ids and metas must have the same length")
        chosen = [job_id for job_id in ids if job_id is not None]
        if len(set(chosen)) != len(chosen):
            raise ValueError("a job id appears more than once in one call")
        after = deadline_s if deadline_s is not None else self.options.deadline_s
        deadline = time.time() + after if after is not None else None
        planned, trace = [], tracing.current()  # the active span, asked once per call
        for source, job_id, meta in zip(sources, ids, meta_list, strict=True):
            final_id = job_id if job_id is not None else str(uuid.uuid4())
            data = self.writer.data(source, final_id, tracing.with_trace(meta, trace), deadline, cache)
            planned.append(PlannedJob(final_id, job_id is not None, data))
        return planned

    def _write(self, shard: int, jobs: list[PlannedJob]) -> Procedure[None]:
        """Create the jobs on one shard in one transaction. Caller-chosen ids are created only if absent,
        atomically: their keys are WATCHed from the check to the write, so two producers racing on one id
        leave one job (the first to write); the loser sees it exists and keeps it."""
        watched = tuple(keys.job(job.id) for job in jobs if job.chosen)
        limit = self.options.max_queue_length
        reads = [command("EXISTS", key) for key in watched]
        reads += [command("LLEN", self.queue.key)] if limit is not None else []
        wanted = self.options.wait_replicas
        wait = (wanted, self.options.wait_timeout_ms) if wanted > 0 else None
        while True:
            if watched:
                yield Watch(shard, watched)
            replies = (yield Batch(shard, tuple(reads))) if reads else []
            existing = {key for key, found in zip(watched, replies, strict=False) if found}
            fresh = [job for job in jobs if keys.job(job.id) not in existing] if existing else jobs
            if not fresh and wait is None:
                return
            if fresh and limit is not None and replies[-1] + len(fresh) > limit:
                raise QueueFull(self.queue.name, replies[-1], len(fresh), limit)
            try:
                written = yield Commit(shard, self._writes(fresh, watched), wait)
            except redis.OutOfMemoryError as exc:
                raise RedisFull(self.queue.name, len(fresh), str(exc)) from exc
            if written is not False:
                if wait is not None and written < wanted:
                    raise NotReplicated([job.id for job in fresh or jobs], int(written), wanted, self.names[shard])
                return
            log.info("a caller-chosen job id was created or changed concurrently; checking again")

    def _writes(self, fresh: list[PlannedJob], watched: tuple[str, ...]) -> tuple[Command, ...]:
        """The transaction's commands: the fresh jobs; or, when every job exists already (a retry after
        ``NotReplicated``) and replicas are waited for, one harmless write of our own, so that ``WAIT`` counts
        the replicas that have everything written before it (a connection that wrote nothing is answered at
        once). The key is watched: a job that expired or changed since the check aborts it, and is checked again."""
        if fresh:
            return self.writer.commands([job.data for job in fresh])
        return (command("HSET", watched[0], "replicas_checked_at", str(time.time())),)

    def result(self, job_id: str, timeout: float = 30.0) -> Procedure[dict[str, Any]]:
        """The job's final result (``JobFailed``, ``JobTimeout``); a cache hit of this producer at once."""
        if job_id in self.cache.answers:
            return self.cache.answers.pop(job_id)
        return (yield from wait_for_result(self.shard_of(job_id), job_id, timeout))

    def classify(self, image: ImageInput, timeout: float, meta: dict | None, cache: bool) -> Procedure[dict]:
        """Enqueue one image and wait for its result."""
        job_id = yield from self.enqueue(image, meta=meta, cache=cache)
        return (yield from self.result(job_id, timeout))

    def cancel(self, job_id: str) -> Procedure[CancelOutcome]:
        """Cancel the job on its shard, in one atomic script (``producer.cancel``)."""
        return (yield from cancel_job(self.shard_of(job_id), job_id, self.queue.name))

    def live_workers(self) -> Procedure[dict[str, int | None]]:
        """How many live workers serve this queue, per shard (by name): RQ's worker set of the queue, each
        member counted while its key lives. None for a shard that cannot be asked (down, or a user whose
        ACL may not read the worker keys)."""
        counts: dict[str, int | None] = {}
        for shard, name in enumerate(self.names):
            try:
                members = yield call(shard, "SMEMBERS", keys.queue_workers(self.queue.name))
                alive = (yield Batch(shard, tuple(command("EXISTS", m) for m in sorted(members)))) if members else []
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                counts[name] = None  # unreachable, or NOPERM (a ResponseError)
                continue
            counts[name] = sum(1 for found in alive if found)
        return counts

    def cursors(
        self, group: str, consumer: str | None, start: str, claim_idle_s: float, block_ms: int
    ) -> list[GroupCursor]:
        """One group cursor per shard's feed: the same group and consumer name on each."""
        name = consumer or default_consumer()
        return [
            GroupCursor(self.queue.stream, group, name, start=start, claim_idle_s=claim_idle_s, block_ms=block_ms)
            for _ in self.names
        ]
