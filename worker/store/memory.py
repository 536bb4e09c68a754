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


class MemoryBroker:
    """The shared state of every ``MemoryStore``: what a Redis server holds for the Redis store."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.queue: deque[str] = deque()
        self.jobs: dict[str, MemoryJob] = {}
        self.started: dict[str, str] = {}  # execution -> worker name
        self.alive: set[str] = set()
        self.published: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def enqueue(self, kwargs: dict[str, Any], *, func_name: str = "worker.tasks.classify", retries: int = 0,
                job_id: str | None = None) -> str:  # fmt: skip
        """Queue a job; return its id."""
        with self.lock:
            job_id = job_id or f"job-{next(self._ids)}"
            self.jobs[job_id] = MemoryJob(job_id, func_name, kwargs, retries_left=retries)
            self.queue.append(job_id)
            self.lock.notify_all()
            return job_id

    def status(self, job_id: str) -> str:
        """``queued``, ``started``, ``finished`` or ``failed``."""
        with self.lock:
            return self.jobs[job_id].status


class MemoryStore(QueueStore):
    """One worker's view of a ``MemoryBroker``."""

    def __init__(self, broker: MemoryBroker, worker_name: str, max_deliveries: int = 3) -> None:
        self.broker, self.worker_name, self.max_deliveries = broker, worker_name, max_deliveries
        self._eids = itertools.count(1)

    def register(self) -> None:
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
            taken, suspects = [], 0
            while b.queue and len(taken) < max_jobs:
                job = b.jobs[b.queue.popleft()]
                if job.lost and suspects:
                    b.queue.appendleft(job.job_id)  # one suspect per take
                    break
                suspects += bool(job.lost)
                job.status = "started"
                record = JobRecord(job.job_id, f"e{next(self._eids)}", func_name=job.func_name, kwargs=job.kwargs,
                                   enqueued_at=job.enqueued_at, started_at=time.time(), taken_at=time.monotonic(),
                                   lost=job.lost, retries_left=job.retries_left)  # fmt: skip
                b.started[record.execution] = self.worker_name
                taken.append(record)
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
                    result = make_result(job.job_id, model="", worker=self.worker_name, timings_ms={}, meta={},
                                         error=error)  # fmt: skip
                    job.results.append(result)
                    b.published.append(result)
                    poison.append(job.job_id)
                else:
                    job.status = "queued"
                    b.queue.appendleft(job.job_id)
                    requeued.append(job.job_id)
            b.lock.notify_all()
        return requeued, poison

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
