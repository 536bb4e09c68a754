"""The pipeline's last stage: record finished batches in the store (all that are ready, in one call), and
keep them through a Redis outage until it ends or, when stopping, until the shutdown timeout."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from .backoff import Backoff
from .errors import JobError
from .jobs import answer
from .progress import InHand, Item, Observer, PipelineSettings, Stats
from .store import Outcome, PartlyRecorded, QueueStore, StoreUnavailable
from .tracing import Tracing, trace_fields

log = logging.getLogger(__name__)

CLOSED = object()  # end of a stage's stream


@dataclass
class Answered:
    """A forward pass's answers, in the order of ``batch`` (the pipeline's items): a prediction or a
    ``JobError`` each, the pass's ms, the tag of the model that ran it. The finish stage builds the results."""

    batch: list[Any]
    preds: list[Any]
    infer_ms: float
    tag: str


class FinishStage:
    """The finish stage of ``worker.pipeline.Pipeline``, which sets these attributes."""

    store: QueueStore
    settings: PipelineSettings
    stop: threading.Event
    done: queue.Queue
    hand: InHand
    stats: Stats
    observer: Observer | None
    stopping_since: float | None
    unrecorded: int
    progressed: Any
    tracing: Tracing
    predictor: Any  # its ``tag``: the model that runs now

    # -- finish ----------------------------------------------------------------------------------
    def finish(self) -> None:
        """Record finished batches (all that are ready, in one store call); keep them through outages."""
        pending: list[tuple[list[Outcome], float]] = []
        most = self.settings.finish_backoff_max_s
        closing, backoff = False, Backoff(min(0.5, most), max_s=most)
        while not (closing and not pending):
            closing = self._collect(pending, block=not pending) or closing
            if not pending:
                continue
            outcomes = [o for batch, _ in pending for o in batch]
            try:
                called_at = time.monotonic()
                self.store.finish(outcomes)
            except PartlyRecorded as exc:  # a shard is down: the others' jobs are done, its own wait alone
                pending = self._partly(pending, exc.recorded)
                cause = exc.__cause__ if isinstance(exc.__cause__, StoreUnavailable) else exc  # (full, unavailable)
                if not self._wait_out(cause, len(outcomes) - len(exc.recorded), backoff, True, counted=exc.tried):
                    return
                continue
            except StoreUnavailable as exc:
                self.progressed()  # waiting on Redis is not a stall
                if not self._wait_out(exc, len(outcomes), backoff):
                    return
                continue
            backoff.reset()
            self.stats.outage.answered(called_at)
            self.progressed()
            self._acknowledged(pending)
            pending = []

    def _wait_out(
        self, exc: StoreUnavailable, count: int, backoff: Backoff, until_more: bool = False, counted: bool = True
    ) -> bool:
        """Wait before recording ``count`` finished jobs again (``until_more``: or until more are finished, which
        the store can record elsewhere); False once stopping has waited long enough."""
        left = self._shutdown_left()
        if left <= 0:
            self.unrecorded = count
            log.error(
                "stopping, and the queue store stayed unavailable for %.0f s: exiting with %d finished job(s) "
                "unrecorded (re-queued by the reaper once this worker's key expires)",
                self.settings.shutdown_timeout_s,
                count,
            )
            return False
        delay_s = min(backoff.next(), left, 1.0 if self.stop.is_set() else float("inf"))
        if counted:  # (a shard skipped while it backs off made no new call to count)
            self.stats.store_error(exc, "finish", f", {count} finished job(s) kept, next try in {delay_s:.1f} s")
        self._pause(delay_s, until_more)
        return True

    def _pause(self, delay_s: float, until_more: bool = False) -> None:
        """The back-off between tries; a stop cuts it short (the shutdown timeout counts from the stop), and so do
        newly finished batches when ``until_more`` (their shards answer: only the one that is down backs off)."""
        if self.stop.is_set():
            time.sleep(delay_s)  # stopping: a try every second at most, until the shutdown timeout
            return
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.is_set():
                self._shutdown_left()  # the shutdown timeout counts from now, not from the next try's failure
                return
            with self.done.not_empty:  # the queue's own condition: woken by the next put
                if until_more and self.done.queue:
                    return
                self.done.not_empty.wait(min(left, 0.2))

    def _shutdown_left(self) -> float:
        """Seconds left to record finished jobs: unbounded until stopping, then the shutdown timeout."""
        if not self.stop.is_set():
            return float("inf")
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
        return self.settings.shutdown_timeout_s - (time.monotonic() - self.stopping_since)

    def _collect(self, pending: list[tuple[list[Outcome], float]], *, block: bool) -> bool:
        """Move finished batches from ``done`` to ``pending``; True once the stream is closed."""
        closed = False
        try:
            entry = self.done.get() if block else self.done.get_nowait()
            while True:
                if entry is CLOSED:
                    closed = True
                elif isinstance(entry[0], Answered):  # a forward pass's answers: its results are built here
                    pending.append((self._outcomes(entry[0]), entry[1]))
                else:
                    pending.append(entry)
                entry = self.done.get_nowait()
        except queue.Empty:
            pass
        return closed

    def _partly(
        self, pending: list[tuple[list[Outcome], float]], recorded: set[str]
    ) -> list[tuple[list[Outcome], float]]:
        """Acknowledge the outcomes a finish recorded (``recorded``: executions); what stays pending."""
        done, left = [], []
        for outcomes, forward_end in pending:
            ours = [o for o in outcomes if o.job.execution in recorded]
            rest = [o for o in outcomes if o.job.execution not in recorded]
            done += [(ours, forward_end)] if ours else []
            left += [(rest, forward_end)] if rest else []
        self.progressed()
        self._acknowledged(done)
        return left

    def _acknowledged(self, pending: list[tuple[list[Outcome], float]]) -> None:
        now = time.monotonic()
        for outcomes, forward_end in pending:
            self.stats.to_publish_ms.extend([(now - forward_end) * 1000] * len(outcomes))
            self.stats.jobs += len(outcomes)
            self.stats.batches += 1
            if self.observer is not None:
                self.observer.observe_batch([o.result for o in outcomes], now - forward_end)
            self.hand.release([o.job for o in outcomes])

    def _outcomes(self, answered: Answered) -> list[Outcome]:
        """A forward pass's answers as the jobs' outcomes (on the finish stage's thread)."""
        batch, infer_ms, tag = answered.batch, answered.infer_ms, answered.tag
        for item, pred in zip(batch, answered.preds, strict=True):
            item.error = pred if isinstance(pred, JobError) else None
        outcomes = [
            self._outcome(item, len(batch), infer_ms, pred, tag)
            for item, pred in zip(batch, answered.preds, strict=True)
        ]
        if self.tracing.enabled:
            fields = [trace_fields(item, o.result) for item, o in zip(batch, outcomes, strict=True)]
            self.tracing.record_batch(fields, infer_ms)
        return outcomes

    def _outcome(
        self, item: Item, batch: int, infer_ms: float = 0.0, pred: Any = None, tag: str | None = None
    ) -> Outcome:
        topk = None if item.error is not None else pred
        result = answer(
            item.job,
            model=tag or self.predictor.tag,
            worker=self.settings.worker_name,
            meta=item.meta,
            decode_ms=item.decode_ms,
            infer_ms=infer_ms,
            topk=topk,
            error=item.error,
            batch=batch,
        )
        cached = self.settings.hash_images and item.error is None and (self.settings.cache_all or item.job.cache_asked)
        image = item.image if cached else None  # the cache's key is its SHA-256, taken at finish
        return Outcome(item.job, result, retry=bool(item.error and item.error.retryable), image=image)
