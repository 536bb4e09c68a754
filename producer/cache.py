"""The producer's side of the result cache for repeated photos (re-posted ads, stock photos).

Key, value and announcement are the wire's (``producer.wire.cache``). ``Producer.enqueue(...,
cache=True)`` reads what the queue's workers announce and the photo's key: a hit is answered to the
caller only, marked ``cached: true``, without queueing (the producer's ACL stays read + enqueue).
Memory: about ``hits kept`` x (~100 B of key + ~300 B of value); bounded by the TTL and the rate of
distinct photos (see docs/scaling.md).
"""

from __future__ import annotations

import uuid
from typing import Any

from .wire import keys
from .wire.cache import cached_result, digest, key_for, parse_announcement
from .wire.serializer import loads


class ProducerCache:
    """The producer's side: look a photo up, keep hits for ``result()``, count hits and misses."""

    def __init__(self) -> None:
        self.answers: dict[str, dict[str, Any]] = {}  # cached job ids -> their results (this process only)
        self.hits = self.misses = 0

    def lookup(self, connection: Any, queue: str, image: bytes, meta: dict | None) -> str | None:
        """A hit's job id (its result kept here), or None (a miss: enqueue as usual)."""
        announced = parse_announcement(connection.get(keys.announcement(queue)))
        raw = connection.get(key_for(digest(image), announced)) if announced else None
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        job_id = f"cached-{uuid.uuid4()}"
        self.answers[job_id] = cached_result(job_id, loads(raw), meta)
        return job_id
