"""The queue store in memory: the same contract as the Redis store, for unit tests that run in milliseconds.

A ``MemoryBroker`` plays the server (the queue, job states, results, live workers); each worker
gets its own ``MemoryStore`` on it. Only plain data crosses: jobs are ``(func_name, args, kwargs)``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from producer.wire.results import make_result

from .base import JobRecord, Outcome, QueueStore, WorkerStats


@dataclass
class MemoryJob:
    """One job as the broker keeps it."""

    job_id: str
    func_name: str
    kwargs: dict[str, Any]
    status: str = "queued"
    retries_left: int = 0
    lost: int = 0
    enqueued_at: float = field(default_factory=time.time)
    results: list[dict[str, Any]] = field(default_factory=list)
    cache_asked: bool = False  # as RQ meta {"cache": true}: its producer asked for the result to be cached


class MemoryBroker:
    """The shared state of every ``MemoryStore``: what a Redis server holds for the Redis store."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.queue: deque[str] = deque()
        self.intermediate: list[str] = []  # ids a blocking wait moved off the queue, not yet started
        self.jobs: dict[str, MemoryJob] = {}
        self.started: dict[str, str] = {}  # execution -> worker name
        self.alive: set[str] = set()
        self.published: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def enqueue(
        self,
        kwargs: dict[str, Any],
        *,
        func_name: str = "worker.tasks.classify",
        retries: int = 0,
        job_id: str | None = None,
        cache: bool = False,
    ) -> str:
        """Queue a job; return its id. ``cache``: it asks for its result to be cached (as ``enqueue(cache=True)``)."""
        with self.lock:
            job_id = job_id or f"job-{next(self._ids)}"
            self.jobs[job_id] = MemoryJob(job_id, func_name, kwargs, retries_left=retries, cache_asked=cache)
            self.queue.append(job_id)
            self.lock.notify_all()
            return job_id

    def move(self) -> str | None:
        """Move the queue's head to the intermediate list, as a worker's blocking wait does; its id, or None."""
        with self.lock:
            if not self.queue:
                return None
            self.intermediate.append(self.queue.popleft())
            return self.intermediate[-1]

    def status(self, job_id: str) -> str:
        """``queued``, ``started``, ``finished`` or ``failed``."""
        with self.lock:
            return self.jobs[job_id].status


class MemoryStore(QueueStore):
    """One worker's view of a ``MemoryBroker``."""

    def __init__(self, broker: MemoryBroker, worker_name: str, max_deliveries: int = 3) -> None:
        self.broker, self.worker_name, self.max_deliveries = broker, worker_name, max_deliveries
        self._eids = itertools.count(1)

    def register(self, stop: threading.Event | None = None) -> None:
        with self.broker.lock:
            self.broker.alive.add(self.worker_name)

    def unregister(self) -> None:
        with self.broker.lock:
            self.broker.alive.discard(self.worker_name)

    def take(self, max_jobs: int, timeout_s: float) -> list[JobRecord]:
        b = self.broker
        deadline = time.monotonic() + timeout_s
        with b.lock:
            while not b.queue and b.lock.wait(max(0.0, deadline - time.monotonic())):
                pass
            return self._start([], max_jobs)

    def start_moved(self, ids: list[bytes], max_jobs: int) -> list[JobRecord]:
        with self.broker.lock:
            return self._start([i.decode() for i in ids], max_jobs)

    def _start(self, ids: list[str], max_jobs: int) -> list[JobRecord]:
        """Start ``ids`` still in the intermediate list, then queued jobs, up to ``max_jobs``; one suspect at most
        (the broker's lock is held)."""
        b = self.broker
        moved = [i for i in ids if i in b.intermediate]
        for job_id in moved:
            b.intermediate.remove(job_id)
        popped = [b.queue.popleft() for _ in range(min(len(b.queue), max(0, max_jobs - len(ids))))]
        taken: list[JobRecord] = []
        bounced: list[str] = []
        for job_id in moved + popped:
            job = b.jobs[job_id]
            if job.lost and any(t.lost for t in taken):
                bounced.append(job_id)  # one suspect per take: the others go back to the queue's head
                continue
            job.status = "started"
            record = JobRecord(
                job.job_id,
                f"e{next(self._eids)}",
                func_name=job.func_name,
                kwargs=job.kwargs,
                enqueued_at=job.enqueued_at,
                started_at=time.time(),
                taken_at=time.monotonic(),
                lost=job.lost,
                retries_left=job.retries_left,
                cache_asked=job.cache_asked,
            )
            b.started[record.execution] = self.worker_name
            taken.append(record)
        b.queue.extendleft(reversed(bounced))
        return taken

    def finish(self, outcomes: list[Outcome]) -> list[str]:
        b, skipped = self.broker, []
        with b.lock:
            for outcome in outcomes:
                job = b.jobs[outcome.job.job_id]
                if b.started.pop(outcome.job.execution, None) is None:
                    skipped.append(job.job_id)
                elif outcome.result["ok"] or not (outcome.retry and job.retries_left > 0):
                    job.status = "finished" if outcome.result["ok"] else "failed"
                    job.results.append(outcome.result)
                    b.published.append(outcome.result)
                else:
                    job.retries_left -= 1
                    job.status = "queued"
                    b.queue.append(job.job_id)
            b.lock.notify_all()
        return skipped

    def heartbeat(self, stats: WorkerStats) -> int:
        with self.broker.lock:
            self.broker.alive.add(self.worker_name)
            return len(self.broker.queue)

    def reap(self) -> tuple[list[str], list[str]]:
        b, requeued, poison = self.broker, [], []
        with b.lock:
            for execution, owner in list(b.started.items()):
                if owner in b.alive:
                    continue
                del b.started[execution]
                job = b.jobs[execution.rsplit(":", 1)[0]]
                job.lost += 1
                if job.lost >= self.max_deliveries:
                    job.status = "failed"
                    error = {"type": "poison", "message": f"lost with its worker {job.lost} times"}
                    result = make_result(
                        job.job_id, model="", worker=self.worker_name, timings_ms={}, meta={}, error=error
                    )
                    job.results.append(result)
                    b.published.append(result)
                    poison.append(job.job_id)
                else:
                    job.status = "queued"
                    b.queue.appendleft(job.job_id)
                    requeued.append(job.job_id)
            b.lock.notify_all()
        return requeued, poison

    def feed_lags(self) -> dict[str, int | None]:
        return {}  # no results feed in memory

    def give_back(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        b, given = self.broker, []
        with b.lock:
            for execution, owner in list(b.started.items()):
                if owner == self.worker_name and execution not in in_hand:
                    del b.started[execution]
                    job_id = execution.rsplit(":", 1)[0]
                    b.jobs[job_id].status = "queued"
                    b.queue.appendleft(job_id)
                    given.append(job_id)
            b.lock.notify_all()
        return given
