"""Which of many jobs have ended, with their results, read from RQ's own records (a procedure, ``producer.ops``).

The backfill's check beside the results feed: a result the feed did not deliver (trimmed away while the
backfill was down, a group created again after a flush, workers that do not feed it such as a plain
``rq worker``) is still found here, from the job's status and its RQ result stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import JobFailed, JobTimeout
from .ops import Batch, Procedure, command
from .results import wait_for_result
from .wire import keys
from .wire.results import make_result

FINAL_STATUSES = frozenset({"finished", "failed", "stopped", "canceled"})
PAGE = 500  # statuses asked in one round trip


@dataclass
class Settled:
    """What RQ's records say of some jobs: the results of those that ended, by id, and the ids of those that no
    longer exist (never created, or expired or deleted with their result)."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def failed_result(job_id: str, error: dict[str, str]) -> dict[str, Any]:
    """A result map for a job that failed where only its error is known (RQ's failure text)."""
    return make_result(job_id, model="", worker="", timings_ms={}, meta=None, error=error)


def settled(shard_of: Callable[[str], int], job_ids: Sequence[str]) -> Procedure[Settled]:
    """The final result of each job of ``job_ids`` that has ended (a failure as an ``ok: false`` map), and the jobs
    that no longer exist; jobs still queued or running are left out."""
    by_shard: dict[int, list[str]] = {}
    for job_id in job_ids:
        by_shard.setdefault(shard_of(job_id), []).append(job_id)
    found = Settled()
    for shard, ids in by_shard.items():
        for start in range(0, len(ids), PAGE):
            page = ids[start : start + PAGE]
            statuses = yield Batch(shard, tuple(command("HGET", keys.job(job_id), "status") for job_id in page))
            for job_id, status in zip(page, statuses, strict=True):
                status = _text(status)
                if status is None or status in FINAL_STATUSES:
                    result = yield from _final(shard, job_id)
                    if result is None:
                        found.missing.append(job_id)
                    else:
                        found.results[job_id] = result
    return found


def _final(shard: int, job_id: str) -> Procedure[dict[str, Any] | None]:
    try:
        return (yield from wait_for_result(shard, job_id, 0))
    except JobFailed as exc:
        return exc.result if exc.result is not None else failed_result(job_id, exc.error)
    except JobTimeout:  # no final result recorded, and no job (it ended without one only if it is gone)
        return None
