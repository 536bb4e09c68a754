"""The queue store's interface: register, take, finish, heartbeat, reap, give back; and the records it trades in.

The pipeline and the heartbeat talk to a store, never to Redis: ``worker.store.rq.RedisStore`` is the
RQ/Redis implementation, ``worker.store.sharded.ShardedStore`` several of them (shards, priorities) behind
this same interface, ``worker.store.memory.MemoryStore`` the in-memory twin with the same contract
(tests/contract runs one suite against both). Records are immutable: what the pipeline learns about a
job on its way (its image's digest) travels on its own item and on the ``Outcome``.
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .printable import shown


class StoreUnavailable(Exception):
    """The store cannot be reached right now (connection lost, timeout); retry later."""


class PartlyRecorded(StoreUnavailable):
    """A finish recorded the outcomes of some shards' jobs (``recorded``: their executions; ``skipped``: the ids of
    those a reaper re-queued meanwhile) and not the others': their shard is unavailable. The caller keeps only the
    others, so a shard that is down holds back its own jobs alone."""

    def __init__(self, reason: str, recorded: set[str], skipped: list[str], tried: bool = True) -> None:
        super().__init__(reason)
        self.recorded, self.skipped = recorded, skipped
        self.tried = tried  # False: the down shard was not asked this time (backing off): no new error to count


class StoreFull(StoreUnavailable):
    """The store refuses writes: Redis reached ``maxmemory`` (noeviction). Finishing jobs frees
    memory, so the pipeline keeps its finished batches and retries with back-off."""


class Misfit(NamedTuple):
    """A key that exists with another type than the one the store writes there (``found``, ``wanted``: Redis
    ``TYPE`` names), as a script found it."""

    key: str
    found: str
    wanted: str

    def __str__(self) -> str:
        return f"{shown(self.key)} is a {self.found}, not a {self.wanted}"


class WrongTypeKeys(StoreUnavailable):
    """A script refused to run, writing nothing, because keys it must write are of the wrong type (written by
    a client that is neither RQ nor a worker). Retried with back-off: the call succeeds once they are deleted."""

    def __init__(self, script: str, found: list[Misfit]) -> None:
        super().__init__(f"{script} refused, nothing written: " + "; ".join(str(m) for m in found))
        self.script, self.found = script, found


@dataclass(frozen=True)
class JobRecord:
    """A job taken and started by this worker, as the store read it (built once, never changed).

    ``func_name``/``args``/``kwargs`` are the job's call as its data says; ``read_error`` is set
    instead when the data could not be read. Times: ``enqueued_at``/``started_at`` are Unix seconds
    (``started_at`` on the store's clock: Redis ``TIME``), ``taken_at`` is this process's
    ``time.monotonic()`` when the take returned.
    """

    job_id: str
    execution_id: str
    func_name: str | None = None
    args: Any = ()
    kwargs: Any = field(default_factory=dict)
    read_error: str | None = None
    enqueued_at: float | None = None
    started_at: float = 0.0
    taken_at: float = 0.0
    lost: int = 0  # times this job was lost with a dead worker before
    retries_left: int = 0
    result_ttl_s: int | None = None
    failure_ttl_s: int | None = None
    cache_asked: bool = False  # its producer asked for its result to be cached (RQ job meta, ``wire.cache.asked``)

    def now(self) -> float:
        """The store's clock now (Unix seconds), from the start's time and this process's monotonic
        clock since: deadlines and timings never depend on this machine's wall clock."""
        if not self.taken_at:  # a record not made by a take
            return time.time()
        return self.started_at + max(0.0, time.monotonic() - self.taken_at)

    @property
    def execution(self) -> str:
        """``job_id:execution_id``: how the started registry names this run of the job."""
        return f"{self.job_id}:{self.execution_id}"


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``result`` is the result map; ``retry`` re-queues it if it has retries left; ``image``
    the bytes it classified, when its result may be cached (a store with the cache on files the result under
    their SHA-256, taken at finish: on the finishing thread, off the decode path), or ``digest`` that SHA-256."""

    job: JobRecord
    result: dict[str, Any]
    retry: bool = False
    digest: str | None = None
    image: bytes | None = None


@dataclass
class WorkerStats:
    """What the heartbeat reports about this worker."""

    jobs: int = 0
    batches: int = 0
    images_per_s_1m: float = 0.0


class QueueStore(abc.ABC):
    """Where jobs wait and results go. Every method may raise ``StoreUnavailable``."""

    worker_name: str
    dropped: int = 0  # queued ids dropped unstarted because no client could name them (not UTF-8)

    @abc.abstractmethod
    def register(self, stop: threading.Event | None = None) -> None:
        """Announce this worker (``rq info`` lists it); waiting for a predecessor of the same name to stop
        beating ends early once ``stop`` is set."""

    def announce(self, cache: dict[str, Any]) -> None:  # noqa: B027 (optional: a store without a cache ignores it)
        """Say what results this worker now writes (its model tag after a swap, ...); the cache keys follow."""

    @abc.abstractmethod
    def unregister(self) -> None:
        """Remove this worker's registration (it stops)."""

    @abc.abstractmethod
    def take(self, max_jobs: int, timeout_s: float) -> list[JobRecord]:
        """Wait up to ``timeout_s`` for a first job, then take whatever else is queued, up to
        ``max_jobs`` in all, and mark them started. Jobs whose data is gone are answered and dropped; jobs
        whose own keys are of the wrong type stay queued.

        At most one job lost with a dead worker before (``lost > 0``) is in one take."""

    @abc.abstractmethod
    def start_moved(self, ids: list[bytes], max_jobs: int) -> list[JobRecord]:
        """Start ``ids`` that a blocking wait already moved off the queue (each only if it is still ours: a
        reaper may have given it back meanwhile), then whatever else is queued, up to ``max_jobs`` in all."""

    @abc.abstractmethod
    def finish(self, outcomes: list[Outcome]) -> list[str]:
        """Record every job's end, publish every final result, re-queue retries; one atomic step.

        Jobs a reaper gave back meanwhile are skipped (their next run records them); their ids are
        returned. A job whose end cannot be written because a key it needs is of the wrong type is left
        started under this worker (``give_back`` re-queues it once the key is deleted)."""

    @abc.abstractmethod
    def heartbeat(self, stats: WorkerStats) -> int:
        """Keep this worker alive for another TTL; return the backlog (jobs waiting)."""

    @abc.abstractmethod
    def reap(self) -> tuple[list[str], list[str]]:
        """Give back jobs of dead workers and ids stranded between take and start; fail jobs lost
        too often as ``poison``. Returns ``(requeued ids, poison ids)``."""

    @abc.abstractmethod
    def give_back(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        """Re-queue jobs started under this worker's name whose executions are not ``in_hand``
        (a start whose reply never arrived). Returns their ids."""

    @abc.abstractmethod
    def feed_lags(self) -> dict[str, int | None]:
        """Per consumer group of the results feed, the entries it has yet to read (None where unknown)."""

    def wrong_type_counts(self) -> dict[str, int]:
        """How many times keys of the wrong type were found, by key (per-job keys by their pattern, e.g.
        ``rq:results:*``), since this store was made. A store that can't hold such keys has none."""
        return {}
