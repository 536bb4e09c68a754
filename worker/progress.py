"""The pipeline's parts besides its loop: what a worker holds (the executions in hand, with waits on their
count), what it has done (counters and costs, for the heartbeat, metrics and the exit log), its settings,
and the interfaces of the stages it is wired with besides the store and the decoder."""

from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import WorkerSettings
from .errors import JobError
from .outage import Outage
from .store import JobRecord, StoreFull


@dataclass
class Item:
    """A job on its way through the pipeline."""

    job: JobRecord
    meta: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None  # the bytes decoded (the job's, or fetched): a batch's repeats; the cache's key
    pixels: bytes | None = None
    error: JobError | None = None
    decode_ms: float = 0.0
    fetch_ms: float = 0.0  # image_url jobs: the fetch (a failed fetch's time is its decode_ms too, as results say)
    fetched: bool = True  # False when the fetch failed (nothing was decoded)


class InHand:
    """The executions this worker holds (taken, not yet acknowledged), with waits on their count."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.held: set[str] = set()

    def add(self, jobs: list[JobRecord]) -> None:
        with self.cond:
            self.held.update(j.execution for j in jobs)

    def release(self, jobs: list[JobRecord]) -> None:
        with self.cond:
            self.held.difference_update(j.execution for j in jobs)
            self.cond.notify_all()

    def wait_until(self, ok: Callable[[int], bool], stop: threading.Event | None = None) -> int:
        """Wait until ``ok(count)`` (or ``stop`` is set); return the count."""
        with self.cond:
            while not ok(len(self.held)) and not (stop is not None and stop.is_set()):
                self.cond.wait(0.1)
            return len(self.held)

    def count(self) -> int:
        """How many executions are in hand."""
        with self.cond:
            return len(self.held)

    def snapshot(self) -> set[str]:
        with self.cond:
            return set(self.held)


class Stats:
    """Jobs and batches done, and the pipeline's own cost per job (for the exit log and the heartbeat)."""

    def __init__(self) -> None:
        self.jobs = self.batches = 0
        self.duplicates = 0  # photos that appeared again in their batch and were not run twice
        self.to_decode_ms: deque[float] = deque(maxlen=10_000)  # taken -> decode start
        self.to_publish_ms: deque[float] = deque(maxlen=10_000)  # forward end -> published
        self.store_errors: Counter[str] = Counter()  # calls refused: "full" (maxmemory) or "unavailable"
        self.outage = Outage()  # one log line per outage, not per failed call

    def store_error(self, exc: Exception, what: str, detail: str = "") -> None:
        """Count one refused store call (for metrics) and log it once per outage (``what`` failed)."""
        self.store_errors["full" if isinstance(exc, StoreFull) else "unavailable"] += 1
        self.outage.failed(what, exc, detail)

    def summary(self) -> str:
        def p50(values: deque[float]) -> str:
            return f"{statistics.median(values):.2f}" if values else "n/a"

        return (
            f"{self.jobs} jobs in {self.batches} batches; pipeline cost p50: taken->decode "
            f"{p50(self.to_decode_ms)} ms, forward end->published {p50(self.to_publish_ms)} ms"
        )


@dataclass(frozen=True)
class PipelineSettings:
    """How the pipeline batches and how much it holds; units in names."""

    worker_name: str
    max_wait_ms: float = 5.0
    idle_wait_ms: float = 1000.0
    batches_in_hand: int = 3
    burst: bool = False  # stop once a take finds the queue empty
    shutdown_timeout_s: float = 30.0  # once stopping, how long finished jobs wait for an unavailable store
    hash_images: bool = True  # the result cache is on: SHA-256 the photos of jobs whose results it keeps
    cache_all: bool = False  # it keeps every successful job's result, not only those whose producer asked
    # the finisher's longest back-off through an outage: a quarter of --worker-ttl-s, so that its finished jobs
    # are recorded within it of Redis answering again, long before any reaper's deferral (one TTL) ends (their
    # execution keys may have expired during a long outage, and a reaper pass would count them as lost)
    finish_backoff_max_s: float = 5.0


class StageFailed(RuntimeError):
    """A pipeline stage's thread ended on an error of the code's own (a bug, or the host out of memory): the
    worker must end (``BROKEN_EXIT``, its jobs re-queued by the reaper), not hang with jobs in hand."""


def finish_backoff_max(worker_ttl_s: float) -> float:
    """The finisher's longest back-off (``PipelineSettings.finish_backoff_max_s``): a quarter of the TTL."""
    return max(0.5, min(30.0, worker_ttl_s / 4))


class ShutdownIncomplete(RuntimeError):
    """Stopping, the store stayed unavailable past the shutdown timeout: finished jobs were not recorded
    (the reaper re-queues them once this worker's key expires)."""


class Predicts(Protocol):
    """The inference stage as the pipeline sees it (``worker.infer.Predictor``)."""

    cap: int
    tag: str

    overlaps: bool  # a launched batch runs on while the next is formed and launched (a CUDA device)

    def launch(self, pixels: list[Any]) -> Any:
        """Start a batch's forward pass; its ``result()``: top-k (or a ``JobError``) per image, and the ms; its
        ``tag``: the model that runs it."""


class Observer(Protocol):
    """Whoever records finished batches (``worker.metrics.Metrics``)."""

    def observe_batch(self, results: list[dict[str, Any]], publish_s: float) -> None:
        """One finished batch."""


PRIORITY_BATCHES_IN_HAND = 2  # with --queue high,default: a high job waits behind at most one batch in hand


def pipeline_settings_for(settings: WorkerSettings) -> PipelineSettings:
    """The pipeline's settings. A worker serving several priority queues holds fewer batches (one in the forward
    pass, one decoded ahead instead of three): jobs already in hand run first, so a ``high`` job that arrives
    waits behind at most one batch of ``default`` jobs besides the running one (a little pipelining traded
    for the priority's promise)."""
    queues = [q for q in settings.queue.split(",") if q.strip()]
    return PipelineSettings(
        settings.worker_name,
        settings.max_wait_ms,
        settings.idle_wait_ms,
        batches_in_hand=PRIORITY_BATCHES_IN_HAND if len(queues) > 1 else PipelineSettings.batches_in_hand,
        burst=settings.burst,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        hash_images=settings.cache_ttl_s > 0,
        cache_all=settings.cache_for == "all",
        finish_backoff_max_s=finish_backoff_max(settings.worker_ttl_s),
    )
