"""The Redis store's script calls filled in: key names and prefixes from ``producer.wire.keys``, the
results the scripts complete from templates, and FINISH's values per job. Pure functions, no Redis."""

from __future__ import annotations

import logging
import zlib
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producer.wire import keys
from producer.wire.cache import announcement, compact, digest
from producer.wire.cache import key_for as cache_key_for
from producer.wire.results import (
    CANCELED,
    GONE,
    LEAN_AFTER_BYTES,
    exc_string_for,
    poison_error,
    script_template,
)
from producer.wire.serializer import dumps

from .base import JobRecord, Outcome
from .calls import Announce, Finish, FinishJob, GiveBack, Heartbeat, Reap, Take
from .printable import shown

log = logging.getLogger(__name__)

STARTED_TTL_S = 360  # how long a started job's entries live without a heartbeat
DEFAULT_RESULT_TTL_S = 500  # RQ's default for a job without result_ttl
DEFAULT_FAILURE_TTL_S = 31536000  # RQ's DEFAULT_FAILURE_TTL (one year)


def affixes(key_of: Callable[[str], str]) -> tuple[str, str]:
    """What comes before and after an id in the keys ``key_of`` names (so that Lua never spells a key)."""
    prefix, _, suffix = key_of("\0").partition("\0")
    return prefix, suffix


def exc_text(error: dict[str, str]) -> bytes:
    """RQ's ``exc_string`` for ``error`` as RQ stores it in a result stream: zlib-compressed, base64."""
    return b64encode(zlib.compress(exc_string_for(error).encode()))


@dataclass(frozen=True)
class Setting:
    """What one store's calls share: its queue and worker, and the store's settings."""

    queue: str
    worker: str
    worker_ttl_s: int
    max_deliveries: int
    stranded_s: float
    results_maxlen: int
    cache_ttl_s: int

    @property
    def channel(self) -> str:
        return keys.results_channel(self.queue)

    @property
    def stream(self) -> str:
        return keys.results_stream(self.queue)


@dataclass(frozen=True)
class QueueCalls:
    """One store's script calls with everything fixed filled in; each call site replaces what varies."""

    take: Take
    finish: Finish
    reap: Reap
    give_back: GiveBack
    heartbeat: Heartbeat

    @classmethod
    def build(cls, s: Setting) -> QueueCalls:
        """The calls of worker ``s.worker`` on queue ``s.queue``."""
        return cls(_take(s), _finish(s), _reap(s), _give_back(s), _heartbeat(s))


def _take(s: Setting) -> Take:
    gone_size, gone_pairs = script_template(GONE, s.worker)
    return Take(
        queue=keys.queue(s.queue),
        intermediate=keys.intermediate(s.queue),
        wip=keys.started(s.queue),
        worker_key=keys.worker(s.worker),
        worker_executions=keys.worker_executions(s.worker),
        stream=s.stream,
        worker_name=s.worker,
        started_ttl_s=STARTED_TTL_S,
        worker_ttl_s=s.worker_ttl_s,
        seen_prefix=keys.SEEN_PREFIX,
        job_prefix=keys.JOB_PREFIX,
        execution_prefix=keys.EXECUTION_PREFIX,
        executions_prefix=keys.EXECUTIONS_PREFIX,
        results_prefix=affixes(keys.results)[0],
        max_jobs=0,
        execution_base="",
        channel=s.channel,
        stream_maxlen=s.results_maxlen,
        gone_size=gone_size,
        gone_pairs=gone_pairs,
        ids=(),
    )


def _finish(s: Setting) -> Finish:
    canceled_size, canceled_pairs = script_template(CANCELED, s.worker)
    dependents_prefix, dependents_suffix = affixes(keys.dependents)
    dependencies_prefix, dependencies_suffix = affixes(keys.dependencies)
    return Finish(
        wip=keys.started(s.queue),
        worker_key=keys.worker(s.worker),
        worker_executions=keys.worker_executions(s.worker),
        queue=keys.queue(s.queue),
        queues=keys.QUEUES,
        finished=keys.finished(s.queue),
        failed=keys.failed(s.queue),
        stream=s.stream,
        worker_name=s.worker,
        channel=s.channel,
        first_start=0.0,
        job_prefix=keys.JOB_PREFIX,
        dependents_prefix=dependents_prefix,
        dependents_suffix=dependents_suffix,
        dependencies_prefix=dependencies_prefix,
        dependencies_suffix=dependencies_suffix,
        execution_prefix=keys.EXECUTION_PREFIX,
        executions_prefix=keys.EXECUTIONS_PREFIX,
        results_prefix=affixes(keys.results)[0],
        stream_maxlen=s.results_maxlen,
        canceled_size=canceled_size,
        canceled_pairs=canceled_pairs,
        canceled_exc=exc_text(CANCELED),
        cache_ttl_s=s.cache_ttl_s,
        jobs=(),
    )


def _reap(s: Setting) -> Reap:
    poison = poison_error(s.max_deliveries)
    poison_size, poison_pairs = script_template(poison, s.worker)
    worker_executions_prefix, worker_executions_suffix = affixes(keys.worker_executions)
    return Reap(
        wip=keys.started(s.queue),
        queue=keys.queue(s.queue),
        intermediate=keys.intermediate(s.queue),
        failed=keys.failed(s.queue),
        stream=s.stream,
        finished=keys.finished(s.queue),
        execution_prefix=keys.EXECUTION_PREFIX,
        executions_prefix=keys.EXECUTIONS_PREFIX,
        worker_prefix=affixes(keys.worker)[0],
        worker_executions_prefix=worker_executions_prefix,
        worker_executions_suffix=worker_executions_suffix,
        job_prefix=keys.JOB_PREFIX,
        seen_prefix=keys.SEEN_PREFIX,
        results_prefix=affixes(keys.results)[0],
        stranded_s=s.stranded_s,
        max_deliveries=s.max_deliveries,
        poison_exc=exc_text(poison),
        failure_ttl_s=DEFAULT_FAILURE_TTL_S,
        channel=s.channel,
        stream_maxlen=s.results_maxlen,
        poison_size=poison_size,
        poison_pairs=poison_pairs,
    )


def _give_back(s: Setting) -> GiveBack:
    return GiveBack(
        wip=keys.started(s.queue),
        worker_executions=keys.worker_executions(s.worker),
        queue=keys.queue(s.queue),
        execution_prefix=keys.EXECUTION_PREFIX,
        job_prefix=keys.JOB_PREFIX,
        min_age_s=10.0,
        worker_name=s.worker,
        full=0,
        held=(),
    )


def _heartbeat(s: Setting) -> Heartbeat:
    return Heartbeat(
        worker_key=keys.worker(s.worker),
        worker_executions=keys.worker_executions(s.worker),
        queue=keys.queue(s.queue),
        ttl_s=s.worker_ttl_s,
        fields=(),
    )


def finish_job(outcome: Outcome, cache: dict[str, Any] | None = None) -> FinishJob:
    """FINISH's values for one job; ``cache`` is what this worker announces (``producer.wire.cache``), None
    when the cache is off."""
    job, result = outcome.job, outcome.result
    if not result["ok"] and outcome.retry and job.retries_left > 0:
        log.info(
            "job %s re-queued after %s (%d retries left)",
            shown(job.job_id),
            shown(str(result["error"])),
            job.retries_left - 1,
        )
        return FinishJob("retry", job.job_id, job.execution_id, 0, job.started_at, retries_left=job.retries_left - 1)
    message = dumps(result)
    lean = _lean(result, message)
    if not result["ok"]:
        ttl = DEFAULT_FAILURE_TTL_S if job.failure_ttl_s is None else job.failure_ttl_s
        # A deterministic failure would fail the same way again: no retries left (as the plain-rq path records it).
        failure = exc_text(result["error"])
        return FinishJob(
            "fail",
            job.job_id,
            job.execution_id,
            ttl,
            job.started_at,
            message=message,
            payload=failure,
            lean_message=lean,
        )
    ttl = DEFAULT_RESULT_TTL_S if job.result_ttl_s is None else job.result_ttl_s
    cache_key, cache_value = _cache_entry(outcome, cache)
    return FinishJob(
        "ok",
        job.job_id,
        job.execution_id,
        ttl,
        job.started_at,
        message=message,
        payload=b64encode(message),
        data=_without_image(job),
        cache_key=cache_key,
        cache_value=cache_value,
        lean_message=lean,
        lean_payload=b64encode(lean) if lean else b"",
    )


def _lean(result: dict[str, Any], message: bytes) -> bytes:
    """The result with ``meta`` nil, for a nearly full Redis: the meta is then stored once, in the job's data,
    not again in RQ's result stream and the feed (``producer.wire.results.LEAN_AFTER_BYTES``); empty when the
    meta is small (not worth a second message)."""
    if not result["meta"] or len(message) < LEAN_AFTER_BYTES:
        return b""
    return dumps({**result, "meta": None})


def _cache_entry(outcome: Outcome, cache: dict[str, Any] | None) -> tuple[str, bytes]:
    """The result cache's key and value for a successful result, or empty ones (not cached)."""
    found = outcome.digest or (digest(outcome.image) if cache is not None and outcome.image is not None else None)
    if cache is None or not found:
        return "", b""
    # keyed by the tag of the model that produced it (a swap between take and finish never files an old
    # version's answer under the new tag)
    return cache_key_for(found, {**cache, "tag": outcome.result["model"]}), compact(outcome.result)


def _without_image(job: JobRecord) -> bytes:
    """The job's call with its image dropped (msgpack, uncompressed: RQ reads both), so that a finished
    job keeps its meta but not its photo for the whole result TTL; empty when it has no image."""
    if not isinstance(job.kwargs, dict) or "image" not in job.kwargs:
        return b""
    kwargs = {k: v for k, v in job.kwargs.items() if k != "image"}
    return dumps([job.func_name, None, job.args, kwargs])


def announce_call(queues: list[str], cache: dict[str, Any]) -> Announce:
    """ANNOUNCE of what ``cache`` says (``producer.wire.cache.announcement``) on each queue's key."""
    since = float(cache.get("since") or 0.0)
    return Announce(keys=tuple(keys.announcement(q) for q in queues), value=announcement(**cache), since=since)
