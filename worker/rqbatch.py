"""The only code that knows RQ's keys and internals: take many jobs, start them, finish them.

Per batch, whatever its size: one blocking move plus one pipelined run of moves (more only while
waiting for a fuller batch), one script call that reads and starts every job, one pipeline that
finishes every job (a script for the successes: status, result stream, registries, execution
records, worker counters, PUBLISH; RQ's own calls for failures and retries). Round trips do not
grow with the batch size, and the per-job work is done by Redis, not by Python packing commands.
"""

from __future__ import annotations

import copy
import logging
import zlib
from base64 import b64encode
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import redis
from rq import Queue, SimpleWorker
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import current_timestamp, now, utcformat

from producer.protocol import exc_string_for, make_result, results_channel
from producer.serializer import MsgpackSerializer, dumps

from .batching import collect
from .rqscripts import Scripts

# How long a started job's entries live (RQ's started registry, execution records) without a heartbeat.
STARTED_TTL_S = 360
EXECUTION_PREFIX = f"{RQ_KEY_PREFIX}:execution:"
SEEN_PREFIX = f"{RQ_KEY_PREFIX}:adclassify:seen:"  # the reaper's marks on ids in the intermediate list

log = logging.getLogger(__name__)


class BatchWorker(SimpleWorker):
    """RQ's identity for our process: registration, heartbeats and counters that ``rq info`` reads.

    It never runs RQ's own one-job-at-a-time loop; ``worker.loop`` drives it through ``RQBatch``.
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        raise NotImplementedError("BatchWorker runs batches through worker.rqbatch.RQBatch")


@dataclass
class Taken:
    """A job moved off the queue: ``job`` is None when its hash could not be read."""

    job_id: str
    job: Job | None
    execution: Execution | None = None
    read_error: str | None = None
    lost: int = 0  # times this job was lost with a dead worker before (see worker.reaper)


@dataclass
class Outcome:
    """How a job ended: ``result`` is the result map; ``retry`` re-queues it if it has retries left."""

    taken: Taken
    result: dict[str, Any]
    retry: bool = False


class RQBatch:
    """Take, start and finish batches of RQ jobs on one queue for one ``BatchWorker``."""

    def __init__(self, worker: BatchWorker, queue: Queue) -> None:
        self.worker = worker
        self.queue = queue
        self.connection: redis.Redis = worker.connection
        self.channel = results_channel(queue.name)
        self.intermediate_key = queue.intermediate_queue_key
        self.scripts = Scripts(self.connection)
        self.finished_key = queue.finished_job_registry.key
        self._template: Job | None = None

    # -- take ---------------------------------------------------------------------------------
    def take(self, max_jobs: int, max_wait_s: float, idle_wait_s: float) -> list[str]:
        """Move up to ``max_jobs`` job ids into RQ's intermediate list (see ``batching.collect``)."""
        return collect(
            self._move_blocking, self._move_now, max_items=max_jobs, max_wait_s=max_wait_s, idle_wait_s=idle_wait_s
        )

    def take_now(self, max_jobs: int) -> list[str]:
        """Move whatever is queued now, up to ``max_jobs``, without waiting (one round trip)."""
        return self._move_now(max_jobs)

    def _move_blocking(self, timeout_s: float) -> str | None:
        if timeout_s < 0.001:
            return None
        job_id = self.connection.blmove(self.queue.key, self.intermediate_key, timeout_s, "LEFT", "RIGHT")
        return job_id.decode() if job_id is not None else None

    def _move_now(self, n: int) -> list[str]:
        with self.connection.pipeline(transaction=False) as pipe:
            for _ in range(n):
                pipe.lmove(self.queue.key, self.intermediate_key, "LEFT", "RIGHT")
            moved = pipe.execute()
        return [job_id.decode() for job_id in moved if job_id is not None]

    # -- start --------------------------------------------------------------------------------
    def start(self, job_ids: list[str]) -> list[Taken]:
        """Read and mark every job started in one script call (one round trip)."""
        started = now()
        executions = [uuid4().hex for _ in job_ids]
        args: list[Any] = [self.intermediate_key, self.queue.started_job_registry.key, self.worker.key,
                           self._worker_executions_key, self.worker.name, STARTED_TTL_S,
                           repr(started.timestamp()), utcformat(started), self.worker.worker_ttl,
                           SEEN_PREFIX, self.queue.key]  # fmt: skip
        for job_id, execution_id in zip(job_ids, executions):
            args += [Job.key_for(job_id), job_id, f"{EXECUTION_PREFIX}{job_id}:{execution_id}",
                     ExecutionRegistry(job_id=job_id, connection=self.connection).key, execution_id]  # fmt: skip
        hashes = self.scripts.call("start", args)
        self.worker.last_heartbeat = started
        taken = [
            self._restore(job_id, raw, eid, started)
            for job_id, raw, eid in zip(job_ids, hashes, executions)
            if raw != 0
        ]  # 0: sent back (a 2nd suspect)
        gone = [t.job_id for t in taken if t.job is None]
        if gone:
            log.warning("dropped %d queued id(s) whose job hash is gone: %s", len(gone), ", ".join(gone))
            self._answer_gone(gone)
        return [t for t in taken if t.job is not None]

    def _answer_gone(self, ids: list[str]) -> None:
        """Publish ``ok: false`` (``job_gone``) for ids whose job hash is gone: there is no RQ job to fail."""
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                error = {"type": "job_gone", "message": "the job's data expired or was deleted before it ran"}
                result = make_result(job_id, model="", worker=self.worker.name, timings_ms={}, meta={}, error=error)
                pipe.publish(self.channel, dumps(result))
            pipe.execute()

    def _restore(self, job_id: str, raw: list[bytes] | None, execution_id: str, started: datetime) -> Taken:
        if not raw:
            return Taken(job_id, None)
        job = self._new_job(job_id)
        execution = Execution(execution_id, job_id, self.connection, worker_name=self.worker.name)
        try:
            restore_job(job, dict(zip(raw[::2], raw[1::2])))
        except (ValueError, TypeError, KeyError, zlib.error) as exc:
            log.warning("job %s has an unreadable hash: %s", job_id, exc)
            job.origin = self.queue.name
            return Taken(job_id, job, execution, read_error=str(exc))
        job.worker_name, job.started_at, job.last_heartbeat, job._status = (
            self.worker.name, started, started, JobStatus.STARTED)  # fmt: skip
        fields = dict(zip(raw[::2], raw[1::2]))
        return Taken(job_id, job, execution, lost=int(fields.get(b"lost_deliveries", 0) or 0))

    # -- finish -------------------------------------------------------------------------------
    def finish(self, outcomes: list[Outcome], started_at: datetime) -> None:
        """Record every job's end and publish every result, in one pipelined round trip.

        Successes (nearly all jobs) are recorded by the ``finish`` script; failures and retries
        use RQ's own calls on the same pipeline.
        """
        ended = now()
        counts, fast = {"ok": 0, "failed": 0}, []
        outcomes = self._drop_reaped_failures(outcomes)
        with self.connection.pipeline() as pipe:
            for outcome in outcomes:
                job = outcome.taken.job
                if job is None:
                    continue
                job.ended_at = ended
                if outcome.result["ok"]:
                    counts["ok"] += 1
                    if not self._succeed_fast(fast, outcome, started_at):
                        self._succeed(pipe, outcome, started_at)
                    continue
                counts["failed"] += 1
                if outcome.retry and job.should_retry:
                    self._retry(pipe, outcome)
                else:
                    self._fail(pipe, outcome, started_at)
                if outcome.taken.execution is not None:
                    outcome.taken.execution.delete(job=job, pipeline=pipe)
            args = [self.queue.started_job_registry.key, self.worker.key, self._worker_executions_key,
                    self.worker.name, self.channel, utcformat(ended), counts["ok"], counts["failed"],
                    repr((ended - started_at).total_seconds()), *fast]  # fmt: skip
            self.scripts.queue(pipe, "finish", args)
            replies = pipe.execute(raise_on_error=False)
        self.scripts.retry_missing(replies, "finish", args)
        skipped = replies[-1] if isinstance(replies[-1], list) else []
        if skipped:
            log.warning("not recording %d job(s) re-queued by a reaper meanwhile: %s", len(skipped),
                        ", ".join(s.decode() for s in skipped))  # fmt: skip

    def _drop_reaped_failures(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Failures of jobs a reaper took back meanwhile are not written (one round trip, only if any fail)."""
        failing = [o for o in outcomes if not o.result["ok"] and o.taken.execution is not None]
        if not failing:
            return outcomes
        with self.connection.pipeline(transaction=False) as pipe:
            for o in failing:
                pipe.zscore(self.queue.started_job_registry.key, o.taken.execution.composite_key)
            gone = {o.taken.job_id for o, score in zip(failing, pipe.execute()) if score is None}
        if gone:
            log.warning("not recording failures of jobs re-queued by a reaper meanwhile: %s", ", ".join(gone))
        return [o for o in outcomes if o.taken.job_id not in gone]

    def _succeed_fast(self, args: list[Any], outcome: Outcome, started_at: datetime) -> bool:
        """Append a success's arguments for the ``finish`` script; False if it needs RQ's own path."""
        job, execution = outcome.taken.job, outcome.taken.execution
        assert job is not None and job.ended_at is not None
        ttl = job.get_result_ttl(self.worker.default_result_ttl)
        if execution is None or ttl is None or ttl <= 0:
            return False
        message = dumps(outcome.result)
        job._status = JobStatus.FINISHED
        args += [job.key, job.dependencies_key, job.dependents_key, Result.get_key(job.id),
                 self.finished_key, ttl, current_timestamp() + ttl, job.id, execution.key,
                 ExecutionRegistry(job_id=job.id, connection=self.connection).key, execution.id,
                 b64encode(message), message, repr(started_at.timestamp()), repr(job.ended_at.timestamp())]  # fmt: skip
        return True

    def _succeed(self, pipe: Any, outcome: Outcome, started_at: datetime) -> None:
        job, execution = outcome.taken.job, outcome.taken.execution
        assert job is not None
        ttl = job.get_result_ttl(self.worker.default_result_ttl)
        job._status = JobStatus.FINISHED
        pipe.hset(job.key, mapping={"status": JobStatus.FINISHED, "ended_at": utcformat(job.ended_at)})
        Result.create(
            job, Result.Type.SUCCESSFUL, ttl, return_value=outcome.result, worker_name=self.worker.name,
            pipeline=pipe, execution_id=execution.id if execution else None,
            execution_started_at=started_at, execution_ended_at=job.ended_at,
        )  # fmt: skip
        if ttl != 0:
            job.finished_job_registry.add(job, ttl, pipe)
        job.cleanup(ttl, pipeline=pipe, remove_from_queue=False)
        pipe.publish(self.channel, dumps(outcome.result))
        if execution is not None:
            execution.delete(job=job, pipeline=pipe)

    def _fail(self, pipe: Any, outcome: Outcome, started_at: datetime) -> None:
        job, execution = outcome.taken.job, outcome.taken.execution
        assert job is not None
        job._status = JobStatus.FAILED
        pipe.hset(job.key, mapping={"status": JobStatus.FAILED, "ended_at": utcformat(job.ended_at)})
        exc_string = exc_string_for(outcome.result["error"])
        pipe.publish(self.channel, dumps(outcome.result))
        if outcome.taken.read_error is not None:  # a hash RQ cannot load: record the failure by hand
            pipe.hset(job.key, "exc_info", zlib.compress(exc_string.encode()))
            pipe.zadd(self.queue.failed_job_registry.key, {job.id: now().timestamp() + (job.failure_ttl or 86400)})
            return
        job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=exc_string, pipeline=pipe)
        Result.create_failure(
            job, job.failure_ttl, exc_string=exc_string, worker_name=self.worker.name, pipeline=pipe,
            execution_id=execution.id if execution else None,
            execution_started_at=started_at, execution_ended_at=job.ended_at,
        )  # fmt: skip

    def _retry(self, pipe: Any, outcome: Outcome) -> None:
        job = outcome.taken.job
        assert job is not None
        log.info("job %s re-queued after %s (%s retries left)", job.id, outcome.result["error"], job.retries_left)
        job.retry(self.queue, pipe)

    def _new_job(self, job_id: str) -> Job:
        """A blank ``Job``: a copy of a template (``Job.__init__`` costs ~20 us, a copy ~3 us)."""
        if self._template is None:
            self._template = Job("template", connection=self.connection, serializer=MsgpackSerializer)
        job = copy.copy(self._template)
        job._id, job.webhooks = job_id, []
        return job

    @property
    def _worker_executions_key(self) -> str:
        return WORKER_EXECUTIONS_KEY_TEMPLATE.format(self.worker.name)


_DATES = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")


def restore_job(job: Job, fields: dict[bytes, bytes]) -> None:
    """``Job.restore``, with the timestamps parsed by ``fromisoformat`` (RQ's strptime is ~15x slower)."""
    dates = {name: fields.pop(name.encode(), None) for name in _DATES}
    job.restore(fields)
    for name, value in dates.items():
        if value:
            setattr(job, name, _parse_time(value))


def _parse_time(value: bytes) -> datetime:
    text = value.decode()
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
