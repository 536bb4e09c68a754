"""The result cache's wire side: the key of a photo's entry, its value and the workers' announcement (pure).

The key is the SHA-256 of the image bytes plus everything that can change the numbers: the model
tag (``name@version``), precision, decode backend and top-k. Workers write entries in their atomic
finish with ``--cache-ttl-s`` (0: off) and announce what they run in ``keys.announcement(queue)``;
producers read both (``producer.cache``). A new model version announces a new tag, so no version is
ever answered from another's entry.

Which jobs' results are written: those that ask (``enqueue(..., cache=True)`` puts ``ASKED`` in the RQ job's
own ``meta``, a hash field workers before this one never read), or every job with ``--cache-for all``.
A job that does not ask is never hashed: its producer never looks it up.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .keys import CACHE_PREFIX
from .results import make_result
from .serializer import dumps, loads

ASKED = {"cache": True}  # the RQ job's meta (``Job.meta``) of a job whose result goes into the cache
MAX_ASKING_META_BYTES = 4096  # RQ meta longer than this is never parsed on the take thread


def asked(rq_meta: bytes | None) -> bool:
    """Whether an RQ job's ``meta`` field (msgpack, or absent) asks for its result to be cached; anything
    else (absent, a foreign value, another map) is no."""
    if not rq_meta or len(rq_meta) > MAX_ASKING_META_BYTES:  # ours is 8 bytes; another tool's large meta: not read
        return False
    try:
        found = loads(rq_meta)
    except ValueError:  # SerializationError: RQ meta written by another serializer
        return False
    return isinstance(found, dict) and found.get("cache") is True


def digest(image: bytes) -> str:
    """SHA-256 of the image bytes, hex."""
    return hashlib.sha256(image).hexdigest()


def announcement(tag: str, precision: str, decode: str, topk: int, ttl_s: int, since: float = 0.0) -> bytes:
    """What a worker announces about the results it writes (msgpack); ``since``: when it began serving the model
    (Unix seconds), so that a re-announcement of an older model never replaces a newer one's."""
    return dumps({"tag": tag, "precision": precision, "decode": decode, "topk": topk, "ttl_s": ttl_s, "since": since})


def key_for(image_digest: str, announced: dict[str, Any]) -> str:
    """The cache key of a photo under what a worker announced."""
    parts = (announced["tag"], announced["precision"], announced["decode"], announced["topk"], image_digest)
    return CACHE_PREFIX + ":".join(str(p) for p in parts)


def compact(result: dict[str, Any]) -> bytes:
    """A successful result's numbers, a few hundred bytes."""
    return dumps({k: result[k] for k in ("label", "score", "topk", "model")})


def parse_announcement(raw: bytes | None) -> dict[str, Any] | None:
    """The announcement if the cache is on (TTL > 0), else None (also for a foreign value: no cache, no crash)."""
    if not raw:
        return None
    try:
        announced = loads(raw)
    except ValueError:  # SerializationError: a foreign value
        return None
    if not isinstance(announced, dict):
        return None
    try:
        return announced if int(announced.get("ttl_s") or 0) > 0 else None
    except (TypeError, ValueError):
        return None


def cached_result(job_id: str, numbers: dict[str, Any], meta: dict | None) -> dict[str, Any]:
    """A full result map from a cache entry, marked ``cached: true``."""
    topk = [(label, score) for label, score in numbers["topk"]]
    result = make_result(job_id, model=numbers["model"], worker="", timings_ms={}, meta=meta, topk=topk)
    result["cached"] = True
    return result
