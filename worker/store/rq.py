"""The queue store on Redis, as RQ lays it out: every job is an RQ job, every worker an RQ worker.

Per take, one script call starts up to N jobs (after one blocking move when the queue was empty) and
one pipelined read fetches their hashes; per finish, one script call records every outcome and
publishes every result. Round trips do not grow with the batch size. Key names come from
``producer.wire.keys``, the scripts and their call shapes from ``worker.store.scripts`` and
``worker.store.calls``; no other module of the worker touches Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, TypeVar
from uuid import uuid4

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from producer.wire import keys
from producer.wire.cache import announcement
from producer.wire.feed import group_rows
from producer.wire.results import DEFAULT_RESULTS_MAXLEN
from producer.wire.serializer import MsgpackSerializer

from .base import JobRecord, Outcome, QueueStore, StoreFull, StoreUnavailable, WorkerStats
from .calls import Register
from .names import claim_name
from .rqcalls import QueueCalls, Setting, finish_job
from .rqdata import iso, read_record, text
from .scripts import Scripts

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchWorker(SimpleWorker):
    """RQ's identity for our process: registration and the fields ``rq info`` reads. It never runs
    RQ's own one-job-at-a-time loop."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        raise NotImplementedError("BatchWorker runs batches through worker.pipeline")


def unavailable(call: Callable[[], T]) -> T:
    """Run ``call``; a lost or timed-out connection becomes ``StoreUnavailable``, a full Redis
    (maxmemory reached, noeviction) ``StoreFull``: both are retried later with back-off."""
    try:
        return call()
    except redis.OutOfMemoryError as exc:
        raise StoreFull(f"redis is full (maxmemory): {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    except redis.RedisError as exc:  # a refusal (NOPERM after an ACL change, a script error): logged, retried
        log.error("redis refused a call: %s", exc)
        raise StoreUnavailable(f"redis refused: {exc}") from exc


class RedisStore(QueueStore):
    """One RQ queue on one Redis, for one worker name."""

    def __init__(
        self,
        connection: redis.Redis,
        queue: str,
        worker_name: str,
        *,
        worker_ttl_s: int = 20,
        max_deliveries: int = 3,
        stranded_s: float = 5.0,
        max_data_bytes: int = 32 << 20,
        results_maxlen: int = DEFAULT_RESULTS_MAXLEN,
        queues: list[str] | None = None,
        primary: bool = True,
        cache: dict[str, Any] | None = None,
    ) -> None:
        self.connection, self.queue, self.worker_name = connection, queue, worker_name
        # a worker serving several queues on this server (priorities): one registration, by the primary store
        self.queues, self.primary = queues or [queue], primary
        self.cache = cache  # what this worker announces (producer.wire.cache); the cache is on when its ttl_s > 0
        self.worker_ttl_s, self.max_data_bytes = worker_ttl_s, max_data_bytes
        cache_ttl_s = int(cache["ttl_s"]) if cache else 0
        setting = Setting(queue, worker_name, worker_ttl_s, max_deliveries, stranded_s, results_maxlen, cache_ttl_s)
        self.calls = QueueCalls.build(setting)  # every script call, all but what varies filled in
        self.scripts = Scripts(connection)
        self._rq_worker: BatchWorker | None = None
        self.dropped = 0  # queued ids dropped unstarted: not UTF-8 (see ``take``)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def rq_worker(self) -> BatchWorker:
        """RQ's worker object for our name (built on first use: building it talks to Redis)."""
        if self._rq_worker is None:
            queues = [Queue(q, connection=self.connection, serializer=MsgpackSerializer) for q in self.queues]
            self._rq_worker = unavailable(
                lambda: BatchWorker(
                    queues,
                    connection=self.connection,
                    name=self.worker_name,
                    serializer=MsgpackSerializer,
                    worker_ttl=self.worker_ttl_s,
                )
            )
        return self._rq_worker

    def register(self, stop: threading.Event | None = None) -> None:
        """Claim our name (``worker.store.names``), then register as RQ's ``register_birth`` does (``rq info``
        lists us), in one script that also runs on a full Redis."""
        unavailable(self.scripts.load)
        if not self.primary:
            return
        unavailable(lambda: claim_name(self.connection, self.worker_name, self.worker_ttl_s, self.reap, stop))
        worker = self.rq_worker
        worker.birth_date = worker.last_heartbeat = datetime.now(timezone.utc)
        sets = (keys.WORKERS, *(keys.queue_workers(q) for q in self.queues))
        fields = tuple(v for pair in worker.serialize().items() for v in pair)
        call = Register(worker_key=worker.key, sets=sets, ttl_s=worker.worker_ttl + 60, fields=fields)
        unavailable(lambda: self.scripts.call(call))
        if self.cache is not None:  # what results we write, for producers' cache lookups (producer.wire.cache)
            for queue in self.queues:
                unavailable(lambda q=queue: self.connection.set(keys.announcement(q), announcement(**self.cache)))

    def unregister(self) -> None:
        """Register our death with RQ."""
        if self.primary:
            unavailable(lambda: self.rq_worker.register_death())

    # -- take ------------------------------------------------------------------------------------
    def take(self, max_jobs: int, timeout_s: float) -> list[JobRecord]:
        """What is queued now (one script call); if nothing, one blocking move, then the script."""
        jobs = self.start_moved([], max_jobs)
        if jobs or timeout_s < 0.001:
            return jobs
        first = self.wait_one(timeout_s)
        if first is None:
            return []
        return self.start_moved([first], max_jobs)

    def wait_one(self, timeout_s: float, connection: redis.Redis | None = None) -> bytes | None:
        """Wait up to ``timeout_s`` for a queued id and move it to RQ's intermediate list (``BLMOVE``, on
        ``connection`` if given: a blocking call holds its connection); the id, or None."""
        take, conn = self.calls.take, connection or self.connection
        return unavailable(lambda: conn.blmove(take.queue, take.intermediate, timeout_s, "LEFT", "RIGHT"))

    def start_moved(self, ids: list[bytes], max_jobs: int) -> list[JobRecord]:
        """TAKE: start up to ``max_jobs`` (``ids`` first); times are Redis's clock (``TIME``)."""
        return unavailable(lambda: self._start(ids, max_jobs))

    def _start(self, ids: list[bytes], max_jobs: int) -> list[JobRecord]:
        call = replace(self.calls.take, max_jobs=max_jobs, execution_base=uuid4().hex[:28], ids=tuple(ids))
        reply = self.scripts.call(call)
        taken_at, started_at = time.monotonic(), float(reply[0])
        begun = self._begun(reply[1:])
        if not begun:
            return []
        with self.connection.pipeline(transaction=False) as pipe:  # one round trip for the whole batch
            for job_id, _ in begun:
                pipe.hgetall(keys.job(job_id))
            hashes = pipe.execute()
        return [
            read_record(job_id, eid, fields, started_at, taken_at, self.max_data_bytes)
            for (job_id, eid), fields in zip(begun, hashes, strict=True)
        ]

    def _begun(self, reply: list[Any]) -> list[tuple[str, str]]:
        """The ``(job_id, execution_id)`` of each job TAKE started; the others are counted and logged."""
        begun, gone = [], []
        for i in range(0, len(reply), 3):
            job_id, state, eid = reply[i], reply[i + 1], text(reply[i + 2])
            if state == -1:
                self.dropped += 1
                log.error("dropped queued id %r: not UTF-8, so no client can name it (never started)", job_id)
            elif state is None:
                gone.append(text(job_id))
            elif state == 1:
                begun.append((text(job_id), eid))
        if gone:
            log.warning("answered job_gone for %d queued id(s) whose job hash is gone: %s", len(gone), ", ".join(gone))
        return begun

    # -- finish ----------------------------------------------------------------------------------
    def finish(self, outcomes: list[Outcome]) -> list[str]:
        """Record every outcome and publish every final result in one script call (one round trip)."""
        if not outcomes:
            return []
        cache = self.cache if self.calls.finish.cache_ttl_s > 0 else None
        call = replace(
            self.calls.finish,
            first_start=min(o.job.started_at for o in outcomes),
            jobs=tuple(finish_job(o, cache) for o in outcomes),
        )
        skipped, canceled = ([text(i) for i in ids] for ids in unavailable(lambda: self.scripts.call(call)))
        if canceled:
            log.info("%d job(s) canceled while they ran, answered as canceled: %s", len(canceled), ", ".join(canceled))
        if skipped:
            log.warning("not recording %d job(s) re-queued by a reaper meanwhile: %s", len(skipped), ", ".join(skipped))
        return skipped

    # -- liveness --------------------------------------------------------------------------------
    def heartbeat(self, stats: WorkerStats) -> int:
        """Refresh the worker key (re-register if a Redis restart lost it); return the backlog."""
        beat = self.calls.heartbeat
        if not self.primary:  # the primary store of this server beats for the worker
            return int(unavailable(lambda: self.connection.llen(beat.queue)))
        now = iso(datetime.now(timezone.utc))
        fields = ("last_heartbeat", now, "batches", stats.batches, "images_per_s_1m", stats.images_per_s_1m)
        backlog, registered = unavailable(lambda: self.scripts.call(replace(beat, fields=fields)))
        if not registered:
            log.warning(
                "worker key %s was gone (a Redis restart without persistence?): registering again", beat.worker_key
            )
            self.register()
        return int(backlog)

    def feed_lags(self) -> dict[str, int | None]:
        """Entries of the results feed each consumer group has yet to read (None before Redis 7)."""
        return {row["name"]: row["lag"] for row in group_rows(unavailable(self._feed_groups))}

    def _feed_groups(self) -> list[dict[Any, Any]]:
        try:
            return self.connection.xinfo_groups(self.calls.take.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []  # no result fed yet
            raise

    def reap(self) -> tuple[list[str], list[str]]:
        """One reaper pass (atomic): poison jobs are failed, published and fed in it."""
        requeued, poison = ([text(i) for i in ids] for ids in unavailable(lambda: self.scripts.call(self.calls.reap)))
        if requeued:
            log.warning("re-queued %d job(s) of dead workers: %s", len(requeued), ", ".join(requeued))
        for job_id in poison:
            log.error("job %s failed as poison after %d lost deliveries", job_id, self.calls.reap.max_deliveries)
        return requeued, poison

    def give_back(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        """Re-queue our own executions that we do not hold (one atomic script)."""
        call = replace(self.calls.give_back, min_age_s=min_age_s, held=tuple(sorted(in_hand)))
        given = [text(i) for i in unavailable(lambda: self.scripts.call(call))]
        if given:
            log.warning("re-queued %d job(s) this worker started but never received: %s", len(given), ", ".join(given))
        return given
