"""Several Redis servers (shards) behind one ``Producer``: ``Producer("redis://a:6379/0,redis://b:6379/0")``.

Each shard is a whole RQ world on its server (queue, registries, workers, results, channel, feed). A
job's shard is chosen by rendezvous hashing of its id: the shard whose name (``host:port/db`` of
its URL, credentials left out) hashes highest with the id wins. The same id always lands on the
same shard while the list is the same, so a caller's idempotent id stays idempotent and
``result(job_id)`` knows where to look. Adding a shard moves about 1/(N+1) of all ids to it,
removing one moves only that shard's ids: jobs already queued stay where they are, so ``result()``
and cancel of such a job look on the wrong shard (a timeout) until it is done. Change the list
when the queues are drained, or keep the old list for lookups.

A shard that is down is never skipped silently: ``enqueue`` raises ``ShardUnavailable`` naming it,
with the ids that were and were not enqueued (``enqueue_many`` is atomic per shard, not across).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import redis

from .cache import ProducerCache
from .client import ImageInput, JobOptions, Producer, Subscription
from .errors import ShardUnavailable
from .wire.jobs import DEFAULT_QUEUE


def split_urls(redis_url: str) -> list[str]:
    """``a,b,c`` -> the shards' URLs."""
    return [url.strip() for url in redis_url.split(",") if url.strip()]


def shard_name(url: str) -> str:
    """A shard's stable name: ``host:port/db`` (or the socket path), without credentials or options."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def rendezvous(names: list[str], job_id: str) -> int:
    """The index of the shard ``job_id`` belongs to (highest random weight)."""
    def weight(name: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{name}\0{job_id}".encode()).digest()[:8], "big")

    return max(range(len(names)), key=lambda i: weight(names[i]))


class ShardedProducer(Producer):
    """``Producer``'s API over several shards (built by ``Producer`` when its URL lists several)."""

    def __init__(self, redis_url: str, queue: str = DEFAULT_QUEUE, *, connection: redis.Redis | None = None,
                 options: JobOptions | None = None) -> None:  # fmt: skip
        urls = split_urls(redis_url)
        self.names = [shard_name(url) for url in urls]
        self.shards = [Producer(url, queue, options=options) for url in urls]
        first = self.shards[0]
        self.options, self.queue, self.channel = first.options, first.queue, first.channel
        self.connection = first.connection  # the first shard's (what single-server code reads)
        self.cache = ShardedCache(self.shards)  # a photo's cache entry is on the shard that classified it

    def shard_for(self, job_id: str) -> Producer:
        """The shard that holds (or will hold) ``job_id``."""
        return self.shards[rendezvous(self.names, job_id)]

    def enqueue_many(self, images: Iterable[ImageInput], *, job_ids: Iterable[str | None] | None = None,
                     metas: Iterable[dict | None] | None = None,
                     deadline_s: float | None = None) -> list[str]:  # fmt: skip
        """Enqueue on each job's shard (one round trip per shard); ids are chosen here when not given."""
        images = list(images)
        ids = [i or str(uuid.uuid4()) for i in (list(job_ids) if job_ids is not None else [None] * len(images))]
        meta_list = list(metas) if metas is not None else [None] * len(images)
        if not len(images) == len(ids) == len(meta_list):
            raise ValueError("images, job_ids and metas must have the same length")
        by_shard: dict[int, list[int]] = {}
        for n, job_id in enumerate(ids):
            by_shard.setdefault(rendezvous(self.names, job_id), []).append(n)
        done: list[str] = []
        for index, positions in by_shard.items():
            try:
                self.shards[index].enqueue_many([images[n] for n in positions],
                                                job_ids=[ids[n] for n in positions],
                                                metas=[meta_list[n] for n in positions],
                                                deadline_s=deadline_s)  # fmt: skip
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise ShardUnavailable(self.names[index], str(exc), done, [i for i in ids if i not in done]) from exc
            done += [ids[n] for n in positions]
        return ids

    def result(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        if job_id in self.cache.answers:  # answered from the result cache
            return self.cache.answers.pop(job_id)
        return self.shard_for(job_id).result(job_id, timeout=timeout)

    def cancel(self, job_id: str) -> bool:
        return self.shard_for(job_id).cancel(job_id)

    def subscribe(self) -> MergedSubscription:
        """Every result published on any shard's channel (best-effort, as on one server)."""
        return MergedSubscription([shard.subscribe() for shard in self.shards])

    def results(self, group: str, consumer: str | None = None, start: str = "$", claim_idle_s: float = 30,
                block_ms: int = 100) -> MergedFeed:  # fmt: skip
        """The durable feed of every shard, read through the same group name on each (at least once)."""
        return MergedFeed([s.results(group, consumer, start, claim_idle_s, block_ms) for s in self.shards])

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


class MergedSubscription(Subscription):
    """One thread per shard's subscription; ``get`` returns whichever result came first."""

    def __init__(self, subs: list[Subscription]) -> None:  # no pubsub of its own: it merges the shards'
        self.subs, self.arrived = subs, queue.Queue()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._pump, args=(s,), daemon=True) for s in subs]
        for thread in self.threads:
            thread.start()

    def _pump(self, sub: Subscription) -> None:
        while not self.stopping.is_set():
            try:
                result = sub.get(timeout=0.2)
            except (redis.ConnectionError, redis.TimeoutError):
                self.stopping.wait(1.0)  # that shard is away; the others go on
                continue
            if result is not None:
                self.arrived.put(result)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            return self.arrived.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=2)
        for sub in self.subs:
            sub.close()


class MergedFeed:
    """Each shard's feed in turn (an entry is acknowledged when its own feed is asked for the next)."""

    def __init__(self, feeds: list[Any]) -> None:
        self.feeds, self.turn = feeds, 0

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            for _ in range(len(self.feeds)):
                feed, self.turn = self.feeds[self.turn], (self.turn + 1) % len(self.feeds)
                try:
                    result = feed.get(timeout_s=0.05)
                except (redis.ConnectionError, redis.TimeoutError):
                    continue  # that shard is away: its entries wait for it in its stream
                if result is not None:
                    return result
        return None

    def __iter__(self) -> MergedFeed:
        return self

    def __next__(self) -> dict[str, Any]:
        while (result := self.get(timeout_s=1.0)) is None:
            pass
        return result

    def ack(self) -> None:
        for feed in self.feeds:
            feed.ack()


class ShardedCache(ProducerCache):
    """Cache lookups on every shard in turn (an entry lives where its photo was classified)."""

    def __init__(self, shards: list[Producer]) -> None:
        super().__init__()
        self.shards = shards

    def lookup(self, connection: Any, queue: str, image: bytes, meta: dict | None) -> str | None:
        for shard in self.shards:
            hit = shard.cache.lookup(shard.connection, queue, image, meta)
            if hit is not None:
                self.hits += 1
                self.answers[hit] = shard.cache.answers.pop(hit)
                return hit
        self.misses += 1
        return None
