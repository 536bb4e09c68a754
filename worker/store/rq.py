"""The queue store on Redis, as RQ lays it out: every job is an RQ job, every worker an RQ worker.

Per take, one script call starts up to N jobs (after one blocking move when the queue was empty) and
one pipelined read fetches their hashes; per finish, one script call records every outcome and
publishes every result. Round trips do not grow with the batch size. Key names come from
``producer.wire.keys``, the scripts and their call shapes from ``worker.store.scripts`` and
``worker.store.calls``; no other module of the worker touches Redis.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from typing import Any
from uuid import uuid4

import redis
from rq import Queue

from producer.wire import keys
from producer.wire.feed import group_rows
from producer.wire.results import DEFAULT_RESULTS_MAXLEN
from producer.wire.serializer import MsgpackSerializer

from ..outage import ReapAfterOutage
from .base import JobRecord, Outcome, QueueStore, StoreFull, StoreUnavailable, WorkerStats, WrongTypeKeys
from .calls import Register
from .misfits import MisfitReport, misfits_of
from .names import claim_name
from .printable import shown
from .rqbase import BatchWorker, feed_groups, shown_ids, unavailable
from .rqcalls import QueueCalls, Setting, announce_call, finish_job
from .rqdata import RECORD_FIELDS, iso, read_record, sort_take_reply, text
from .scripts import Scripts

log = logging.getLogger(__name__)


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
        reap_deferred: bool = False,
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
        self.held = 0  # queued ids the last take left queued: keys of their own are of the wrong type
        self.misfits = MisfitReport()  # keys of the wrong type the scripts found
        self._lost_at: float | None = None  # when our key (and executions set) was found expired: give_back looks wider
        self._claimed = False  # our name is ours (claimed once per process: a retry must not wait for itself)
        self._announce_due = False  # an announcement Redis refused or missed: the next heartbeat writes it
        # after an outage (and, reap_deferred, after this process's start), the others get a TTL to beat again
        self.reap_gate = ReapAfterOutage(worker_ttl_s, closed=reap_deferred)

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
        if not self._claimed:  # a registration retried after a failed write finds its own name: no wait
            reap = partial(self.reap, takeover=True)  # once we register, our predecessor's jobs would look alive
            unavailable(lambda: claim_name(self.connection, self.worker_name, self.worker_ttl_s, reap, stop))
            self._claimed = True
        worker = self.rq_worker
        worker.birth_date = worker.last_heartbeat = datetime.now(timezone.utc)
        sets = (keys.WORKERS, *(keys.queue_workers(q) for q in self.queues))
        # RQ's register_birth leaves 'state' to a later set_state: ours comes with the next take or finish, so
        # a worker registered again mid-run (a Redis restart) would read '?' until then
        fields = tuple(v for pair in {**worker.serialize(), "state": "idle", **self._model()}.items() for v in pair)
        call = Register(worker_key=worker.key, sets=sets, ttl_s=worker.worker_ttl + 60, fields=fields)
        unavailable(lambda: self._run(call))
        if self.cache is not None:
            self.announce(self.cache)

    def _model(self) -> dict[str, str]:
        """The worker hash's ``model`` field: the tag of the model this worker serves (``producer status``)."""
        return {"model": str(self.cache["tag"])} if self.cache else {}

    def announce(self, cache: dict[str, Any]) -> None:
        """What results we write (model tag, precision, decode, top-k, cache TTL), for producers' cache lookups
        (``producer.wire.cache``); again after a model swap."""
        self.cache = cache
        if not self.primary:
            return
        try:
            if unavailable(lambda: self._run(announce_call(self.queues, cache))) < 0:
                raise StoreFull("redis is nearly full")
            self._announce_due = False
        except StoreFull:  # optional (producers skip cache lookups without it): a full Redis must not stop a start
            if not self._announce_due:
                log.warning("redis is full: announcing this worker's results for cache lookups at a later heartbeat")
            self._announce_due = True
        except StoreUnavailable:  # a swap's announcement lost in a blip: producers would look up the old tag
            self._announce_due = True
            raise

    def _run(self, call: Any) -> Any:
        """Run a script call; if it refused because keys it must write are of the wrong type, report them and
        raise ``WrongTypeKeys`` (a ``StoreUnavailable``: the caller retries with back-off)."""
        try:
            return self.scripts.call(call)
        except WrongTypeKeys as exc:
            self.misfits.report(call, exc.found, refused=True)
            raise

    def wrong_type_counts(self) -> dict[str, int]:
        with self.misfits.lock:
            return dict(self.misfits.counts)

    def unregister(self) -> None:
        """Register our death with RQ."""
        if self.primary:
            unavailable(lambda: self.rq_worker.register_death())

    # -- take ------------------------------------------------------------------------------------
    def take(self, max_jobs: int, timeout_s: float) -> list[JobRecord]:
        """What is queued now (one script call); if nothing, one blocking move, then the script. When what is
        queued is only jobs the script must leave queued (keys of their own of the wrong type), it waits out
        ``timeout_s`` instead: a blocking move would hand them back at once, again and again."""
        jobs = self.start_moved([], max_jobs)
        if jobs or timeout_s < 0.001:
            return jobs
        if self.held:
            time.sleep(timeout_s)
            return []
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
        self.held = 0
        reply = self._run(call)
        taken_at, started_at = time.monotonic(), float(reply[0])
        self.misfits.report(call, misfits_of(reply[1]))
        begun = self._begun(reply[2:])
        if not begun:
            return []
        with self.connection.pipeline(transaction=False) as pipe:  # one round trip for the whole batch
            for job_id, _ in begun:
                pipe.hmget(keys.job(job_id), RECORD_FIELDS)  # only what a record reads, not RQ's whole hash
            rows = pipe.execute()
        return [
            read_record(
                job_id, eid, dict(zip(RECORD_FIELDS, row, strict=True)), started_at, taken_at, self.max_data_bytes
            )
            for (job_id, eid), row in zip(begun, rows, strict=True)
        ]

    def _begun(self, reply: list[Any]) -> list[tuple[str, str]]:
        """The ``(job_id, execution_id)`` of each job TAKE started; the others are counted and logged."""
        begun, dropped, self.held = sort_take_reply(reply)
        self.dropped += dropped
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
        skipped, canceled, held, found = unavailable(lambda: self._run(call))
        self.misfits.report(call, misfits_of(found))
        if canceled:
            log.info("%d job(s) canceled while they ran, answered as canceled: %s", len(canceled), shown_ids(canceled))
        if skipped:
            log.warning("not recording %d job(s) re-queued by a reaper meanwhile: %s", len(skipped), shown_ids(skipped))
        if held:
            log.warning(
                "not recording %d job(s): a key each needs is of the wrong type (see above); they stay started under "
                "this worker and are re-queued once it is deleted: %s",
                len(held),
                shown_ids(held),
            )
        return [text(i) for i in skipped]

    # -- liveness --------------------------------------------------------------------------------
    def heartbeat(self, stats: WorkerStats) -> int:
        """Refresh the worker key (re-register if a Redis restart lost it); return the backlog. After a failed
        beat, the first that succeeds defers this store's reaper by one TTL (``ReapAfterOutage``)."""
        try:
            backlog = self._beat(stats)
        except StoreUnavailable:
            self.reap_gate.failed()
            raise
        self.reap_gate.answered()
        return backlog

    def _beat(self, stats: WorkerStats) -> int:
        beat = self.calls.heartbeat
        if not self.primary:  # the primary store of this server beats for the worker
            return int(unavailable(lambda: self.connection.llen(beat.queue)))
        now = iso(datetime.now(timezone.utc))
        misfits = json.dumps(self.misfits.recent(3 * self.worker_ttl_s))  # for ``producer status``
        fields = ("last_heartbeat", now, "batches", stats.batches, "images_per_s_1m", stats.images_per_s_1m)
        model = tuple(v for pair in self._model().items() for v in pair)  # after a swap: the new tag
        call = replace(beat, fields=(*fields, "wrong_type_keys", misfits, *model))
        backlog, registered, found = unavailable(lambda: self._run(call))
        if self._announce_due and self.cache is not None:
            self.announce(self.cache)
        self.misfits.report(call, misfits_of(found))
        if not registered:
            log.warning(
                "worker key %s was gone (expired in an outage, or a Redis restart without persistence): "
                "registering again",
                shown(beat.worker_key),
            )
            self.register()
            self._lost_at = time.monotonic()  # give-backs look through the started registry too, for a while
        return int(backlog)

    def feed_lags(self) -> dict[str, int | None]:
        """Entries of the results feed each consumer group has yet to read (None before Redis 7)."""
        groups = unavailable(lambda: feed_groups(self.connection, self.calls.take.stream))
        return {row["name"]: row["lag"] for row in group_rows(groups)}

    def reap(self, takeover: bool = False) -> tuple[list[str], list[str]]:
        """One reaper pass (atomic): poison jobs are failed, published and fed in it; none for a TTL after an
        outage of this store's server. ``takeover``: at once, only the jobs that name this worker (its name's
        predecessor's)."""
        if not takeover and not self.reap_gate.allows():
            return [], []
        call = replace(self.calls.reap, only_worker=self.worker_name) if takeover else self.calls.reap
        requeued, poison, found = unavailable(lambda: self._run(call))
        self.misfits.report(self.calls.reap, misfits_of(found))
        if requeued:
            log.warning("re-queued %d job(s) of dead workers: %s", len(requeued), shown_ids(requeued))
        for job_id in poison:
            log.error("job %s failed as poison after %d lost deliveries", shown(job_id), self.calls.reap.max_deliveries)
        return [text(i) for i in requeued], [text(i) for i in poison]

    def give_back(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        """Re-queue our own executions that we do not hold (one atomic script)."""
        lost_at = self._lost_at  # our key had expired: the executions set with it
        full = int(lost_at is not None)
        call = replace(self.calls.give_back, min_age_s=min_age_s, full=full, held=tuple(sorted(in_hand)))
        given, found = unavailable(lambda: self._run(call))
        if lost_at is not None and time.monotonic() - lost_at >= min_age_s + 1:
            self._lost_at = None  # every start made before we registered again is old enough to have been seen
        self.misfits.report(call, misfits_of(found))
        if given:
            log.warning(
                "re-queued %d job(s) started under this worker that it does not hold (a start whose reply was "
                "lost, or a finish held back by a key of the wrong type): %s",
                len(given),
                shown_ids(given),
            )
        return [text(i) for i in given]
