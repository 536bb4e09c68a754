"""The queue store on Redis, as RQ lays it out: every job is an RQ job, every worker an RQ worker.

Per take, one script call reads and starts up to N jobs (after one blocking move when the queue
was empty); per finish, one script call records every outcome and publishes every result. Round
trips do not grow with the batch size. Key names come from ``producer.rqkeys``, scripts from
``worker.store.scripts``; no other module of the worker touches Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from base64 import b64encode
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar
from uuid import uuid4

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from producer.wire import keys as rqkeys
from producer.wire.cache import announcement
from producer.wire.feed import group_rows
from producer.wire.results import CANCELED, DEFAULT_RESULTS_MAXLEN, GONE, exc_string_for, poison_error, script_template
from producer.wire.serializer import MsgpackSerializer, SerializationError, loads

from .base import JobRecord, Outcome, QueueStore, StoreFull, StoreUnavailable, WorkerStats
from .names import claim_name
from .rqdata import CANCELED_EXC, DEFAULT_FAILURE_TTL_S, _finish_args, _int_or_none, _iso, _parse_time, _text
from .scripts import Scripts

log = logging.getLogger(__name__)

STARTED_TTL_S = 360  # how long a started job's entries live without a heartbeat
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

    def __init__(self, connection: redis.Redis, queue: str, worker_name: str, *, worker_ttl_s: int = 20,
                 max_deliveries: int = 3, stranded_s: float = 5.0, max_data_bytes: int = 32 << 20,
                 results_maxlen: int = DEFAULT_RESULTS_MAXLEN, queues: list[str] | None = None,
                 primary: bool = True, cache: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.connection, self.queue, self.worker_name = connection, queue, worker_name
        # a worker serving several queues on this server (priorities): one registration, by the primary store
        self.queues, self.primary = queues or [queue], primary
        self.cache = cache  # what this worker announces (producer.cache); the cache is on when its ttl_s > 0
        self.worker_ttl_s, self.max_deliveries, self.stranded_s = worker_ttl_s, max_deliveries, stranded_s
        self.max_data_bytes = max_data_bytes
        self.channel, self.stream = rqkeys.results_channel(queue), rqkeys.results_stream(queue)
        self.results_maxlen = results_maxlen
        self.feed = [self.channel, self.stream, results_maxlen]  # where every final result goes
        self.scripts = Scripts(connection)
        self._rq_worker: BatchWorker | None = None
        self.dropped = 0  # queued ids dropped unstarted: not UTF-8 (see ``take``)
        self.keys = {"queue": rqkeys.queue(queue), "intermediate": rqkeys.intermediate(queue),
                     "wip": rqkeys.started(queue), "worker": rqkeys.worker(worker_name),
                     "wexec": rqkeys.worker_executions(worker_name)}  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def rq_worker(self) -> BatchWorker:
        """RQ's worker object for our name (built on first use: building it talks to Redis)."""
        if self._rq_worker is None:
            queues = [Queue(q, connection=self.connection, serializer=MsgpackSerializer) for q in self.queues]
            self._rq_worker = unavailable(lambda: BatchWorker(queues, connection=self.connection,
                                                              name=self.worker_name, serializer=MsgpackSerializer,
                                                              worker_ttl=self.worker_ttl_s))  # fmt: skip
        return self._rq_worker

    def register(self, stop: threading.Event | None = None) -> None:
        """Claim our name (``worker.store.names``), then register as RQ's ``register_birth`` does (``rq info``
        lists us), in one script that also runs on a full Redis."""
        unavailable(self.scripts.load)
        if not self.primary:
            return
        unavailable(lambda: claim_name(self, stop))
        worker = self.rq_worker
        worker.birth_date = worker.last_heartbeat = datetime.now(timezone.utc)
        fields = [v for pair in worker.serialize().items() for v in pair]
        sets = [rqkeys.WORKERS, *(rqkeys.queue_workers(q) for q in self.queues)]
        args = [worker.key, worker.worker_ttl + 60, len(sets), *sets, *fields]
        unavailable(lambda: self.scripts.call("register", args))
        if self.cache is not None:  # what results we write, for producers' cache lookups (producer.cache)
            for queue in self.queues:
                unavailable(lambda q=queue: self.connection.set(rqkeys.announcement(q), announcement(**self.cache)))

    def _cache_ttl(self) -> int:
        return int(self.cache["ttl_s"]) if self.cache else 0

    def unregister(self) -> None:
        """Register our death with RQ."""
        if self.primary:
            unavailable(lambda: self.rq_worker.register_death())

    # -- take ------------------------------------------------------------------------------------
    def take(self, max_jobs: int, timeout_s: float) -> list[JobRecord]:
        """What is queued now (one script call); if nothing, one blocking move, then the script."""
        jobs = unavailable(lambda: self._start([], max_jobs))
        if jobs or timeout_s < 0.001:
            return jobs
        k = self.keys
        first = unavailable(lambda: self.connection.blmove(k["queue"], k["intermediate"], timeout_s, "LEFT", "RIGHT"))
        if first is None:
            return []
        return unavailable(lambda: self._start([first], max_jobs))

    def _start(self, given: list[bytes], max_jobs: int) -> list[JobRecord]:
        """TAKE: start up to ``max_jobs`` (``given`` first); times are Redis's clock (``TIME``)."""
        k = self.keys
        args = [k["queue"], k["intermediate"], k["wip"], k["worker"], k["wexec"], self.worker_name, STARTED_TTL_S,
                self.worker_ttl_s, rqkeys.SEEN_PREFIX, rqkeys.JOB_PREFIX, rqkeys.EXECUTION_PREFIX,
                rqkeys.EXECUTIONS_PREFIX, max_jobs, uuid4().hex[:28], *self.feed,
                *script_template(GONE, self.worker_name), *given]  # fmt: skip
        reply = self.scripts.call("take", args)
        taken_at, started = time.monotonic(), float(reply[0])
        begun, gone = [], []
        for i in range(1, len(reply), 3):
            job_id, state, eid = reply[i], reply[i + 1], _text(reply[i + 2])
            if state == -1:
                self.dropped += 1
                log.error("dropped queued id %r: not UTF-8, so no client can name it (never started)", job_id)
            elif state is None:
                gone.append(_text(job_id))
            elif state == 1:
                begun.append((_text(job_id), eid))
        if gone:
            log.warning("answered job_gone for %d queued id(s) whose job hash is gone: %s", len(gone), ", ".join(gone))
        if not begun:
            return []
        with self.connection.pipeline(transaction=False) as pipe:  # one round trip for the whole batch
            for job_id, _ in begun:
                pipe.hgetall(rqkeys.job(job_id))
            hashes = pipe.execute()
        return [self._record(job_id, eid, [v for pair in fields.items() for v in pair], started, taken_at)
                for (job_id, eid), fields in zip(begun, hashes)]  # fmt: skip

    def _record(self, job_id: str, eid: str, raw: list[bytes], started: float, taken_at: float) -> JobRecord:
        fields = dict(zip(raw[::2], raw[1::2]))
        record = JobRecord(job_id, eid, started_at=started, taken_at=taken_at)
        try:
            record.enqueued_at = _parse_time(fields.get(b"enqueued_at"))
            record.lost = int(fields.get(b"lost_deliveries") or 0)
            record.retries_left = int(fields.get(b"retries_left") or 0)
            record.result_ttl_s = _int_or_none(fields.get(b"result_ttl"))
            record.failure_ttl_s = _int_or_none(fields.get(b"failure_ttl"))
            call = loads(self._inflate(fields.get(b"data")))
            if not isinstance(call, list | tuple) or len(call) != 4:
                raise ValueError("job data is not a (function, instance, args, kwargs) call")
            record.func_name, instance, record.args, record.kwargs = call
            if instance is not None:
                raise ValueError("job data names an instance method")
        except (ValueError, TypeError, zlib.error, SerializationError) as exc:
            log.warning("job %s has unreadable data: %s", job_id, exc)
            record.read_error = str(exc)
        return record

    def _inflate(self, data: bytes | None) -> bytes:
        """RQ's ``data`` field: zlib-compressed or plain; decompressed with a bound (no zip bombs)."""
        if not data:
            raise ValueError("the job hash has no data")
        if len(data) > self.max_data_bytes:
            raise ValueError(f"job data is {len(data)} bytes, over the limit of {self.max_data_bytes}")
        try:
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, self.max_data_bytes)
        except zlib.error:
            return data
        if inflater.unconsumed_tail:
            raise ValueError(f"job data inflates past the limit of {self.max_data_bytes} bytes")
        return out

    # -- finish ----------------------------------------------------------------------------------
    def finish(self, outcomes: list[Outcome]) -> list[str]:
        """Record every outcome and publish every final result in one script call (one round trip)."""
        if not outcomes:
            return []
        k = self.keys
        started = min(o.job.started_at for o in outcomes)
        args: list[Any] = [k["wip"], k["worker"], k["wexec"], self.worker_name, self.channel, repr(started),
                           k["queue"], rqkeys.QUEUES, rqkeys.JOB_PREFIX, rqkeys.EXECUTION_PREFIX,
                           rqkeys.EXECUTIONS_PREFIX, rqkeys.results(""), rqkeys.finished(self.queue),
                           rqkeys.failed(self.queue), self.stream, self.results_maxlen,
                           *script_template(CANCELED, self.worker_name), CANCELED_EXC, self._cache_ttl()]  # fmt: skip
        cache = self.cache if self._cache_ttl() > 0 else None
        for outcome in outcomes:
            args += _finish_args(outcome, cache)
        skipped, canceled = ([_text(i) for i in ids] for ids in unavailable(lambda: self.scripts.call("finish", args)))
        if canceled:
            log.info("%d job(s) canceled while they ran, answered as canceled: %s", len(canceled), ", ".join(canceled))
        if skipped:
            log.warning("not recording %d job(s) re-queued by a reaper meanwhile: %s", len(skipped),
                        ", ".join(skipped))  # fmt: skip
        return skipped

    # -- liveness --------------------------------------------------------------------------------
    def heartbeat(self, stats: WorkerStats) -> int:
        """Refresh the worker key (re-register if a Redis restart lost it); return the backlog."""
        k = self.keys
        if not self.primary:  # the primary store of this server beats for the worker
            return int(unavailable(lambda: self.connection.llen(k["queue"])))
        fields = ["last_heartbeat", _iso(datetime.now(timezone.utc)), "batches", stats.batches,
                  "images_per_s_1m", stats.images_per_s_1m]  # fmt: skip
        backlog, registered = unavailable(lambda: self.scripts.call(
            "heartbeat", [k["worker"], k["wexec"], k["queue"], self.worker_ttl_s, *fields]))  # fmt: skip
        if not registered:
            log.warning("worker key %s was gone (a Redis restart without persistence?): registering again", k["worker"])
            self.register()
        return int(backlog)

    def feed_lags(self) -> dict[str, int | None]:
        """Entries of the results feed each consumer group has yet to read (None before Redis 7)."""
        return {row["name"]: row["lag"] for row in group_rows(unavailable(self._feed_groups))}

    def _feed_groups(self) -> list[dict[Any, Any]]:
        try:
            return self.connection.xinfo_groups(self.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []  # no result fed yet
            raise

    def reap(self) -> tuple[list[str], list[str]]:
        """One reaper pass (atomic): poison jobs are failed, published and fed in it."""
        k = self.keys
        text = exc_string_for(poison_error(self.max_deliveries)).encode()
        args = [k["wip"], k["queue"], k["intermediate"], rqkeys.EXECUTION_PREFIX, rqkeys.EXECUTIONS_PREFIX,
                rqkeys.WORKER_PREFIX, rqkeys.JOB_PREFIX, rqkeys.SEEN_PREFIX, self.stranded_s, self.max_deliveries,
                rqkeys.failed(self.queue), rqkeys.results(""), b64encode(zlib.compress(text)), DEFAULT_FAILURE_TTL_S,
                *self.feed, *script_template(poison_error(self.max_deliveries), self.worker_name)]  # fmt: skip
        requeued, poison = ([_text(i) for i in ids] for ids in unavailable(lambda: self.scripts.call("reap", args)))
        if requeued:
            log.warning("re-queued %d job(s) of dead workers: %s", len(requeued), ", ".join(requeued))
        for job_id in poison:
            log.error("job %s failed as poison after %d lost deliveries", job_id, self.max_deliveries)
        return requeued, poison

    def give_back(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        """Re-queue our own executions that we do not hold (one atomic script)."""
        k = self.keys
        args = [k["wip"], k["wexec"], rqkeys.EXECUTION_PREFIX, rqkeys.JOB_PREFIX, k["queue"], min_age_s,
                *sorted(in_hand)]  # fmt: skip
        given = [_text(i) for i in unavailable(lambda: self.scripts.call("give_back", args))]
        if given:
            log.warning("re-queued %d job(s) this worker started but never received: %s", len(given), ", ".join(given))
        return given
