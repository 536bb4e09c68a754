"""The result cache for repeated photos (re-posted ads, stock photos): key, value and the model announcement.

The key is the SHA-256 of the image bytes plus everything that can change the numbers: the model
tag (``name@version``), precision, decode backend and top-k. Workers write it in their atomic
finish, with ``--cache-ttl-s`` (0: off); they announce what they run (tag, precision, decode,
top-k, TTL) in ``rq:adclassify:model:<queue>`` when they register. ``Producer.enqueue(...,
cache=True)`` reads the announcement and the key: a hit is answered to the caller only, marked
``cached: true``, without queueing (the producer's ACL stays read + enqueue: nothing is written).
A new model version announces a new tag, so no version is ever answered from another's entry.
Memory: about ``hits kept`` x (~100 B of key + ~300 B of value); bounded by the TTL and the rate
of distinct photos (see docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from .protocol import make_result
from .serializer import dumps, loads

PREFIX = "rq:adclassify:cache:"
ANNOUNCE_PREFIX = "rq:adclassify:model:"


def digest(image: bytes) -> str:
    """SHA-256 of the image bytes, hex."""
    return hashlib.sha256(image).hexdigest()


def announcement_key(queue: str) -> str:
    return f"{ANNOUNCE_PREFIX}{queue}"


def announcement(tag: str, precision: str, decode: str, topk: int, ttl_s: int) -> bytes:
    """What a worker announces about the results it writes (msgpack)."""
    return dumps({"tag": tag, "precision": precision, "decode": decode, "topk": topk, "ttl_s": ttl_s})


def key_for(image_digest: str, announced: dict[str, Any]) -> str:
    """The cache key of a photo under what a worker announced."""
    return (f"{PREFIX}{announced['tag']}:{announced['precision']}:{announced['decode']}:{announced['topk']}:"
            f"{image_digest}")  # fmt: skip


def compact(result: dict[str, Any]) -> bytes:
    """A successful result's numbers, a few hundred bytes."""
    return dumps({"label": result["label"], "score": result["score"], "topk": result["topk"],
                  "model": result["model"]})  # fmt: skip


def parse_announcement(raw: bytes | None) -> dict[str, Any] | None:
    """The announcement if the cache is on (TTL > 0), else None."""
    if not raw:
        return None
    try:
        announced = loads(raw)
    except Exception:  # a foreign value: no cache rather than a crash
        return None
    return announced if isinstance(announced, dict) and int(announced.get("ttl_s") or 0) > 0 else None


class ProducerCache:
    """The producer's side: look a photo up, keep hits for ``result()``, count hits and misses."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}  # cached job ids -> their results (this process only)
        self.hits = self.misses = 0

    def lookup(self, connection: Any, queue: str, image: bytes, meta: dict | None) -> str | None:
        """A hit's job id (its result kept here), or None (a miss: enqueue as usual)."""
        announced = parse_announcement(connection.get(announcement_key(queue)))
        raw = connection.get(key_for(digest(image), announced)) if announced else None
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        job_id = f"cached-{uuid.uuid4()}"
        self.answers[job_id] = cached_result(job_id, loads(raw), meta)
        return job_id


def cached_result(job_id: str, numbers: dict[str, Any], meta: dict | None) -> dict[str, Any]:
    """A full result map from a cache entry, marked ``cached: true``."""
    result = make_result(job_id, model=numbers["model"], worker="", timings_ms={}, meta=meta,
                         topk=[(label, score) for label, score in numbers["topk"]])  # fmt: skip
    result["cached"] = True
    return result
