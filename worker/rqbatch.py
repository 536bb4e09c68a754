"""The only code that knows RQ's keys and internals: take many jobs, start them, finish them.

Per batch, whatever its size: one blocking move plus one pipelined run of moves (more only while
waiting for a fuller batch), one pipelined read of the job hashes, one pipeline that starts every
job, one pipeline that finishes every job (status, result stream, registries, execution records,
worker counters) and publishes every result. Round trips do not grow with the batch size.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_WORKER_TTL
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from producer.protocol import exc_string_for, results_channel
from producer.serializer import MsgpackSerializer, dumps

from .batching import collect

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
        """Read the jobs (one round trip) and mark them started (one round trip)."""
        taken = self._read(job_ids)
        ttl = _heartbeat_ttl(taken)
        with self.connection.pipeline() as pipe:
            for item in taken:
                pipe.lrem(self.intermediate_key, 1, item.job_id)
                if item.job is None:
                    continue
                item.execution = Execution.create(item.job, ttl, pipeline=pipe, worker_name=self.worker.name)
                item.job.prepare_for_execution(self.worker.name, pipeline=pipe)
                pipe.persist(item.job.key)
            self.worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.worker.heartbeat(ttl, pipeline=pipe)
            pipe.execute()
        gone = [item.job_id for item in taken if item.job is None and item.read_error is None]
        if gone:
            log.warning("dropped %d queued id(s) whose job hash is gone: %s", len(gone), ", ".join(gone))
        return [item for item in taken if item.job is not None or item.read_error is not None]

    def _read(self, job_ids: list[str]) -> list[Taken]:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(Job.key_for(job_id))
            hashes = pipe.execute()
        taken = []
        for job_id, raw in zip(job_ids, hashes):
            if not raw:
                taken.append(Taken(job_id, None))
                continue
            job = Job(job_id, connection=self.connection, serializer=MsgpackSerializer)
            try:
                job.restore(raw)
            except (ValueError, TypeError, KeyError, zlib.error) as exc:
                log.warning("job %s has an unreadable hash: %s", job_id, exc)
                job.origin = self.queue.name
                taken.append(Taken(job_id, job, read_error=str(exc)))
                continue
            taken.append(Taken(job_id, job))
        return taken

    # -- finish -------------------------------------------------------------------------------
    def finish(self, outcomes: list[Outcome], started_at: datetime) -> None:
        """Record every job's end and publish every result, in one pipelined round trip."""
        ended = now()
        counts = {"ok": 0, "failed": 0}
        with self.connection.pipeline() as pipe:
            for outcome in outcomes:
                job = outcome.taken.job
                if job is None:
                    continue
                job.ended_at = ended
                if outcome.result["ok"]:
                    self._succeed(pipe, outcome, started_at)
                    counts["ok"] += 1
                elif outcome.retry and job.should_retry:
                    self._retry(pipe, outcome)
                    counts["failed"] += 1
                else:
                    self._fail(pipe, outcome, started_at)
                    counts["failed"] += 1
                if outcome.taken.execution is not None:
                    outcome.taken.execution.delete(job=job, pipeline=pipe)
                    self.worker.executions.pop(outcome.taken.execution.id, None)
            self._count(pipe, counts, (ended - started_at).total_seconds())
            pipe.execute()

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

    def _count(self, pipe: Any, counts: dict[str, int], seconds: float) -> None:
        if counts["ok"]:
            pipe.hincrby(self.worker.key, "successful_job_count", counts["ok"])
        if counts["failed"]:
            pipe.hincrby(self.worker.key, "failed_job_count", counts["failed"])
        pipe.hincrbyfloat(self.worker.key, "total_working_time", seconds)
        self.worker.set_state(WorkerStatus.IDLE, pipeline=pipe)


def _heartbeat_ttl(taken: list[Taken]) -> int:
    """How long the started jobs may go without a heartbeat: the longest job timeout + 60 s."""
    timeouts = [item.job.timeout for item in taken if item.job is not None and item.job.timeout]
    return int(max(timeouts, default=DEFAULT_WORKER_TTL - 60)) + 60
