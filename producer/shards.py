"""Shards: the Redis servers one producer routes over, and which of them holds a job (pure, no I/O).

Each shard is a whole RQ world on its server (queue, registries, workers, results, channel, feed). A
job's shard is chosen by rendezvous hashing of its id: the shard whose name (``host:port/db`` of
its URL, credentials left out) hashes highest with the id wins. The same id always lands on the
same shard while the list is the same, so a caller's idempotent id stays idempotent and
``result(job_id)`` knows where to look. Adding a shard moves about 1/(N+1) of all ids to it,
removing one moves only that shard's ids: jobs already queued stay where they are, so ``result()``
and cancel of such a job look on the wrong shard (a timeout) until it is done. Change the list
when the queues are drained, or keep the old list for lookups.

A single URL is one shard: the single-server deployment, unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .wire.urls import shard_name, split_urls

C = TypeVar("C")


@dataclass(frozen=True)
class Shard(Generic[C]):
    """One Redis server of a producer: its stable name, its URL and the client that talks to it."""

    name: str
    url: str
    connection: C


def shard_urls(redis_url: str | Sequence[str]) -> list[str]:
    """The shards' URLs from a comma-separated list or a sequence of URLs (each may itself be a list);
    ``ValueError`` for none, or for one server listed twice."""
    urls = split_urls(redis_url) if isinstance(redis_url, str) else [u for item in redis_url for u in split_urls(item)]
    if not urls:
        raise ValueError("no Redis URL given")
    names = [shard_name(url) for url in urls]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"a shard is listed more than once: {', '.join(twice)}")
    return urls


def rendezvous(names: Sequence[str], job_id: str) -> int:
    """The index of the shard ``job_id`` belongs to (highest random weight)."""

    def weight(name: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{name}\0{job_id}".encode()).digest()[:8], "big")

    return max(range(len(names)), key=lambda i: weight(names[i]))


def open_shards(redis_url: str | Sequence[str], connection: C | None, connect: Callable[[str], C]) -> list[Shard[C]]:
    """The shards of a producer: one per URL, each client made by ``connect(url)``; or the one shard of an
    explicit ``connection`` (then ``redis_url`` names it and must be a single URL)."""
    urls = shard_urls(redis_url)
    if connection is None:
        return [Shard(shard_name(url), url, connect(url)) for url in urls]
    if len(urls) != 1:
        raise ValueError("an explicit connection is one shard: give one URL with it, or a connect factory")
    return [Shard(shard_name(urls[0]), urls[0], connection)]
