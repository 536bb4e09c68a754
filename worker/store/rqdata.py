"""How the Redis store reads and writes RQ's data: job fields, the FINISH script's values per job,
RQ's time format. Pure functions, no Redis."""

from __future__ import annotations

import logging
import zlib
from base64 import b64encode
from datetime import datetime, timezone
from typing import Any

from producer.wire.cache import compact
from producer.wire.cache import key_for as cache_key_for
from producer.wire.results import CANCELED, exc_string_for
from producer.wire.serializer import dumps

from .base import JobRecord, Outcome

log = logging.getLogger(__name__)

DEFAULT_RESULT_TTL_S = 500  # RQ's default for a job without result_ttl
DEFAULT_FAILURE_TTL_S = 31536000  # RQ's DEFAULT_FAILURE_TTL (one year)

CANCELED_EXC = b64encode(zlib.compress(exc_string_for(CANCELED).encode()))


def _finish_args(outcome: Outcome, cache: dict[str, Any] | None = None) -> list[Any]:
    """The FINISH script's 11 values for one job (see ``worker.store.lua_jobs.FINISH``); ``cache`` is what
    this worker announces (``producer.cache``), None when the cache is off."""
    return [*_outcome_args(outcome), *_cache_args(outcome, cache)]


def _cache_args(outcome: Outcome, cache: dict[str, Any] | None) -> list[Any]:
    if cache is None or not outcome.result["ok"] or not outcome.job.digest:
        return ["", ""]
    return [cache_key_for(outcome.job.digest, cache), compact(outcome.result)]


def _outcome_args(outcome: Outcome) -> list[Any]:
    job, result = outcome.job, outcome.result
    message = dumps(result)
    times = [repr(job.started_at)]
    if result["ok"]:
        ttl = DEFAULT_RESULT_TTL_S if job.result_ttl_s is None else job.result_ttl_s
        return ["ok", job.job_id, job.execution_id, ttl, message, b64encode(message), _without_image(job), *times, 0]
    if outcome.retry and job.retries_left > 0:
        log.info("job %s re-queued after %s (%d retries left)", job.job_id, result["error"], job.retries_left - 1)
        return ["retry", job.job_id, job.execution_id, 0, "", "", "", *times, job.retries_left - 1]
    ttl = DEFAULT_FAILURE_TTL_S if job.failure_ttl_s is None else job.failure_ttl_s
    text = exc_string_for(result["error"]).encode()
    # A deterministic failure would fail the same way again: no retries left (as the plain-rq path records it).
    return ["fail", job.job_id, job.execution_id, ttl, message, b64encode(zlib.compress(text)), "", *times, 0]


def _without_image(job: JobRecord) -> bytes:
    """The job's call with its image dropped (msgpack, uncompressed: RQ reads both), so that a finished
    job keeps its meta but not its photo for the whole result TTL; empty when it has no image."""
    if not isinstance(job.kwargs, dict) or "image" not in job.kwargs:
        return b""
    kwargs = {k: v for k, v in job.kwargs.items() if k != "image"}
    return dumps([job.func_name, None, job.args, kwargs])


def _text(value: Any) -> str:
    """A reply value as text; bytes that are not UTF-8 keep their escapes (never a crash)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def _int_or_none(value: bytes | None) -> int | None:
    return None if value in (None, b"") else int(value)


def _iso(when: datetime) -> str:
    """RQ's ``utcformat``: ``2026-11-29T19:20:30.123456Z``."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: bytes | None) -> float | None:
    if not value:
        return None
    text = value.decode()
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
