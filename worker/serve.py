"""The serving loop: take, start, decode, infer, finish; pipelined, and patient with Redis outages."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
import torch
from rq.utils import now

from .config import WorkerSettings
from .rqbatch import Outcome, RQBatch, Taken

if TYPE_CHECKING:
    from .loop import BatchRunner, InFlight

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class Server:
    """A pipeline: this thread talks to Redis (take, start, finish); a prep thread decodes each batch
    and hands it to the inference thread.

    While batch k+1 decodes and batch k runs its forward pass, this thread acknowledges batch k and
    takes the next one. With a batch in hand the next take does not wait for traffic, so results are
    never held back. On stop, the batches in hand are finished and acknowledged first.

    On a CPU device, decoding runs on the inference thread, between forward passes: overlapping
    them oversubscribes the cores the forward pass's OpenMP team needs, and its barriers stall
    (on 2 cores, EfficientNet-Lite0 at batch 4 ran ~1.7x slower beside the decoders).

    Jobs lost with a dead worker before (``Taken.lost``) run alone, after everything else in hand
    is acknowledged, so a job that kills the worker cannot take its batch-mates down with it.
    If Redis goes away, finished batches wait in ``unacked`` and are written once it is back.
    """

    def __init__(self, settings: WorkerSettings, stop: threading.Event, batches: RQBatch, runner: BatchRunner) -> None:
        self.settings, self.stop, self.batches, self.runner = settings, stop, batches, runner
        self.inflight: Future[InFlight] | None = None
        self.unacked: list[tuple[list[Outcome], datetime]] = []
        self.in_hand: set[str] = set()  # executions started and not yet acknowledged (see Reaper.reap_own)
        self.processed = 0
        self.batches_done = 0
        self.done = False
        self.metrics: Any = None  # worker.metrics.Metrics with --metrics-port

    def serve(self) -> int:
        """Run until stopped (or, with ``--burst``, until the queue is empty); return the jobs finished."""
        backoff_s = 0.5
        threads = (torch.get_num_threads(),)  # OpenMP's thread count is per thread: pass it on
        with contextlib.ExitStack() as stack:
            self.infer = stack.enter_context(
                ThreadPoolExecutor(1, "infer", initializer=torch.set_num_threads, initargs=threads))  # fmt: skip
            cpu = self.runner.model.device.type == "cpu"
            self.prep = self.infer if cpu else stack.enter_context(ThreadPoolExecutor(1, "prep"))
            while not self.done and not (self.stop.is_set() and self.inflight is None and not self.unacked):
                try:
                    self._flush_unacked()
                    self.step()
                    backoff_s = 0.5
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.warning("redis unavailable (%s); retrying in %.1f s", exc, backoff_s)
                    self.stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
        return self.processed

    def step(self) -> None:
        """Take and start the next batch, hand it to decoding, and acknowledge the batch before it."""
        ids = [] if self.stop.is_set() else self._take(busy=self.inflight is not None)
        taken = self.batches.start(ids) if ids else []
        normal = [t for t in taken if t.lost == 0]
        suspects = [t for t in taken if t.lost > 0]
        self.in_hand.update(t.execution.composite_key for t in [*normal, *suspects] if t.execution is not None)
        prev, self.inflight = self.inflight, (self.prep.submit(self._prepare, normal) if normal else None)
        self._finish(prev)
        if suspects:  # alone, with nothing else in hand
            self._finish_inflight()
            item = suspects[0]
            log.warning("job %s was lost with a worker %d time(s) before: running it alone", item.job_id, item.lost)
            self._ack(self.runner.run([item], self.batches.worker.name), _started([item]))
        if not ids and self.inflight is None and self.settings.burst:
            self.done = True

    def _prepare(self, taken: list[Taken]) -> InFlight:
        return self.runner.submit(self.runner.decode_all(taken), self.infer)

    def _take(self, *, busy: bool) -> list[str]:
        """What is queued now when ``busy``, else wait for traffic (see ``worker.batching``)."""
        s, cap = self.settings, self.runner.cap
        if busy:
            return self.batches.take_now(cap)
        return self.batches.take(cap, s.max_wait_ms / 1000, s.idle_wait_ms / 1000)

    def _finish_inflight(self) -> None:
        prev, self.inflight = self.inflight, None
        self._finish(prev)

    def _finish(self, inflight: Future[InFlight] | None) -> None:
        if inflight is not None:
            batch = inflight.result()
            self._ack(self.runner.outcomes(batch, self.batches.worker.name), _started(batch.taken))

    def _ack(self, outcomes: list[Outcome], started: datetime) -> None:
        self.unacked.append((outcomes, started))
        self._flush_unacked()

    def _flush_unacked(self) -> None:
        while self.unacked:
            outcomes, started = self.unacked[0]
            t0 = time.perf_counter()
            self.batches.finish(outcomes, started_at=started)
            if self.metrics is not None:
                self.metrics.observe_batch((o.result for o in outcomes), time.perf_counter() - t0)
            self.unacked.pop(0)
            self.processed += len(outcomes)
            self.batches_done += 1
            self.in_hand.difference_update(o.taken.execution.composite_key for o in outcomes if o.taken.execution)


def _started(taken: list[Taken]) -> Any:
    times = [t.job.started_at for t in taken if t.job is not None and t.job.started_at]
    return min(times) if times else now()
