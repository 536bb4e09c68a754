"""The producer's side of the result cache for repeated photos (re-posted ads, stock photos).

Key, value and announcement are the wire's (``producer.wire.cache``). ``enqueue(..., cache=True)``
reads what the queue's workers announce and the photo's key: a hit is answered to the caller only,
marked ``cached: true``, without queueing (the producer's ACL stays read + enqueue). With several
shards each is asked in turn (an entry lives on the shard whose worker classified the photo); a
shard that cannot be reached counts as a miss there (the cache is an optimisation; the enqueue that
follows reports a shard that is down). Memory: about ``hits kept`` x (~100 B of key + ~300 B of
value); bounded by the TTL and the rate of distinct photos (see docs/scaling.md).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis

from .metrics import cache_lookup
from .ops import Procedure, call
from .wire import keys
from .wire.cache import cached_result, key_for, parse_announcement
from .wire.serializer import loads

log = logging.getLogger(__name__)
MAX_ANSWERS = 100_000  # hits kept for ``result()`` (~40 MB); past it the oldest go (a caller that never asks)


class ProducerCache:
    """The producer's side: look a photo up, keep hits for ``result()``, count hits and misses."""

    def __init__(self, max_answers: int = MAX_ANSWERS) -> None:
        self.answers: dict[str, dict[str, Any]] = {}  # cached job ids -> their results (this process only)
        self.max_answers = max_answers
        self.hits = self.misses = self.dropped = 0

    def lookup(self, queue: str, image_digest: str, meta: dict | None, shards: int) -> Procedure[str | None]:
        """The job id of a hit for the photo of SHA-256 ``image_digest`` (its result kept here for ``result()``), or
        None (a miss: enqueue as usual)."""
        for shard in range(shards):
            try:
                announced = parse_announcement((yield call(shard, "GET", keys.announcement(queue))))
                raw = (yield call(shard, "GET", key_for(image_digest, announced))) if announced else None
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                # down, or a key of another type (WRONGTYPE): a miss there, never an error for the caller
                log.warning("cache lookup on shard %d failed (%s); counting it as a miss there", shard, exc)
                continue
            if raw is not None:
                try:
                    result = cached_result(f"cached-{uuid.uuid4()}", loads(raw), meta)
                except (ValueError, KeyError, TypeError):  # a foreign value under our key: a miss
                    continue
                self.hits += 1
                cache_lookup(hit=True)
                self.keep(result)
                return result["job_id"]
        self.misses += 1
        cache_lookup(hit=False)
        return None

    def keep(self, result: dict[str, Any]) -> None:
        """Keep a hit's result for ``result()``; past ``max_answers`` the oldest goes (its ``result()`` then
        answers ``JobTimeout``, no such job), with one warning per process."""
        self.answers[result["job_id"]] = result
        if len(self.answers) > self.max_answers:
            del self.answers[next(iter(self.answers))]  # dicts keep their insertion order
            if not self.dropped:
                log.warning("over %d cache hits never asked for with result(): dropping the oldest", self.max_answers)
            self.dropped += 1
