"""The worker's streaming pipeline: take -> decode -> batch -> infer -> finish, every stage always running.

Stages are joined by bounded queues. A job is decoded as soon as it is taken; the batcher forms
the next batch from jobs already decoded, so the forward pass of batch k overlaps the decoding of
k+1 and the finishing of k-1. Jobs in hand are bounded (``batches_in_hand`` batches), so other
workers still get work and a crash strands little. No Redis and no torch here: the pipeline talks
to a ``QueueStore``, a ``Fetches`` (``image_url`` jobs), a ``Decoder`` and a ``Predicts``. A fetch in flight
is not counted as decoding: a slow origin never holds a batch past ``max_wait_ms`` (our own decodes may).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from producer.wire.cache import digest
from producer.wire.jobs import ImageRef

from .backoff import Backoff
from .batching import next_batch
from .decode import Decoder, DecodeResult, Fetched, Fetches, NoFetch
from .errors import JobError
from .jobs import answer, job_inputs
from .progress import InHand, Observer, PipelineSettings, Predicts, ShutdownIncomplete, Stats
from .store import JobRecord, Outcome, QueueStore, StoreUnavailable, shown
from .tracing import Tracing, trace_fields

log = logging.getLogger(__name__)

CLOSED = object()  # end of a stage's stream


@dataclass
class Item:
    """A job on its way through the pipeline."""

    job: JobRecord
    meta: dict[str, Any] = field(default_factory=dict)
    digest: str | None = None  # SHA-256 of the image bytes: the result cache's key; duplicates in a batch
    pixels: bytes | None = None
    error: JobError | None = None
    decode_ms: float = 0.0
    fetch_ms: float = 0.0  # image_url jobs: the fetch (a failed fetch's time is its decode_ms too, as results say)
    fetched: bool = True  # False when the fetch failed (nothing was decoded)


class Pipeline:
    """One worker's stages, wired in the constructor; ``run()`` until ``stop`` is set and all is drained."""

    def __init__(
        self,
        store: QueueStore,
        decoder: Decoder,
        predictor: Predicts,
        settings: PipelineSettings,
        stop: threading.Event,
        *,
        hand: InHand | None = None,
        stats: Stats | None = None,
        observer: Observer | None = None,
        health: Any = None,
        fetcher: Fetches | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store, self.decoder, self.predictor, self.settings = store, decoder, predictor, settings
        self.fetcher = fetcher or NoFetch()
        self.tracing = tracing or Tracing()  # off unless OTEL_TRACES_EXPORTER is set (worker.tracing)
        self.stop, self.observer = stop, observer
        # the watchdog's evidence that we are not wedged: a forward pass done, a finish tried
        self.progressed: Callable[[], None] = health.progressed if health is not None else lambda: None
        self.hand, self.stats = hand or InHand(), stats or Stats()
        self.limit = max(1, settings.batches_in_hand) * predictor.cap
        self.ready: queue.Queue = queue.Queue(maxsize=self.limit + 1)  # decoded, waiting for a batch
        self.done: queue.Queue = queue.Queue()  # outcomes waiting to be recorded (bounded by the hand)
        self.closed = False
        self.decoding = 0  # images submitted to the decoder and not yet back
        self.stopping_since: float | None = None
        self.unrecorded = 0  # finished jobs given up on at shutdown (the store stayed unavailable)
        self.lock = threading.Lock()

    def run(self) -> int:
        """take -> decode -> batch -> infer -> finish; return the number of jobs finished."""
        stages = [
            threading.Thread(target=stage, name=stage.__name__, daemon=True)
            for stage in (self.take, self.infer, self.finish)
        ]
        for stage in stages:
            stage.start()
        for stage in stages:
            while stage.is_alive():  # wake up now and then: a signal may have landed on another thread, and
                stage.join(0.2)  # its Python handler runs only when this (the main) thread runs bytecode
        log.info("pipeline stopped: %s", self.stats.summary())
        if self.unrecorded:
            raise ShutdownIncomplete(f"{self.unrecorded} finished job(s) not recorded: the queue store was unavailable")
        return self.stats.jobs

    # -- take and decode -------------------------------------------------------------------------
    def take(self) -> None:
        """Take jobs while there is room in hand; each goes to decoding at once."""
        backoff = Backoff()
        while not self.stop.is_set():
            held = self.hand.wait_until(lambda n: n < self.limit, self.stop)
            if self.stop.is_set():
                break
            try:
                called_at = time.monotonic()
                jobs = self.store.take(min(self.limit - held, self.predictor.cap), self.settings.idle_wait_ms / 1000)
                backoff.reset()
                self.stats.outage.answered(called_at)
            except StoreUnavailable as exc:
                delay_s = backoff.next()
                self.stats.store_error(exc, "take", f", next try in {delay_s:.1f} s")
                self.stop.wait(delay_s)
                continue
            if not jobs and self.settings.burst:  # done once the queue is empty with nothing in hand
                if held == 0:
                    self.stop.set()
                self.hand.wait_until(lambda n: n == 0)
            self.hand.add(jobs)
            for job in sorted(jobs, key=lambda j: j.lost > 0):
                self._alone(job) if job.lost else self._admit(job)
        self.fetcher.close()  # every fetched image has gone on to the decoder, or to ``done``
        self.decoder.close()  # every submitted image has reached ``ready`` or ``done``
        self.ready.put(CLOSED)

    def _admit(self, job: JobRecord) -> None:
        item = Item(job)
        try:
            image, item.meta = job_inputs(job)
        except JobError as err:
            item.error = err
            log.warning("job %s failed: %s", shown(job.job_id), shown(str(err)))
            self.done.put(([self._outcome(item, 1)], time.monotonic()))
            return
        if isinstance(image, ImageRef):  # fetched on the fetch stage's threads, then decoded
            self.fetcher.submit(image.url, lambda fetched: self._fetched(item, fetched))
        else:
            self._decode(item, image)

    def _fetched(self, item: Item, fetched: Fetched) -> None:
        item.fetch_ms, item.fetched = fetched.ms, fetched.data is not None
        if fetched.data is None:
            return self._hand_on(item, DecodeResult(None, fetched.error, fetched.started, fetched.ms))
        self._decode(item, fetched.data)

    def _decode(self, item: Item, image: bytes) -> None:
        with self.lock:
            self.decoding += 1
        self.decoder.submit(image, lambda result: self._decoded(item, image, result))

    def _decoded(self, item: Item, image: bytes, result: DecodeResult) -> None:
        # the result cache's key (and a batch's repeated photos), hashed on the decoder's threads, not the
        # taker's (hashlib releases the GIL for large buffers), and only when the cache is on
        if self.settings.hash_images and result.error is None:
            item.digest = digest(image)
        self._hand_on(item, result)
        with self.lock:
            self.decoding -= 1

    def _hand_on(self, item: Item, result: DecodeResult) -> None:
        self.stats.to_decode_ms.append(max(0.0, result.started - item.job.taken_at) * 1000)
        item.pixels, item.error, item.decode_ms = result.pixels, result.error, result.ms
        if item.error is None:
            self.ready.put(item)
            return
        log.warning("job %s failed: %s", shown(item.job.job_id), shown(str(item.error)))
        self.done.put(([self._outcome(item, 1)], time.monotonic()))

    def _alone(self, job: JobRecord) -> None:
        """A job lost with a worker before runs alone, with nothing else in hand (it may crash us)."""
        self.hand.wait_until(lambda n: n <= 1)
        log.warning("job %s was lost with a worker %d time(s) before: running it alone", shown(job.job_id), job.lost)
        self._admit(job)
        self.hand.wait_until(lambda n: n == 0)

    # -- batch and infer ---------------------------------------------------------------------------
    def infer(self) -> None:
        """Form batches from decoded jobs and run them; busy -> no extra wait (see ``batching``)."""
        busy = False
        while True:
            batch = next_batch(
                self._next_ready,
                max_items=self.predictor.cap,
                busy=busy,
                idle_wait_s=0.2,
                max_wait_s=self.settings.max_wait_ms / 1000,
                taken_at=lambda i: i.job.taken_at,
                decoding=lambda: self.decoding,
            )
            busy = bool(batch)
            if batch:
                preds, infer_ms = self._predict(batch)
                self.progressed()
                for item, pred in zip(batch, preds, strict=True):
                    item.error = pred if isinstance(pred, JobError) else None
                outcomes = [
                    self._outcome(item, len(batch), infer_ms, pred) for item, pred in zip(batch, preds, strict=True)
                ]
                self.done.put((outcomes, time.monotonic()))
                if self.tracing.enabled:
                    self.tracing.record_batch(
                        [trace_fields(item, o.result) for item, o in zip(batch, outcomes, strict=True)], infer_ms
                    )
            elif self.closed:
                break
        self.done.put(CLOSED)

    def _predict(self, batch: list[Item]) -> tuple[list[Any], float]:
        """One forward pass over the batch's distinct photos (a photo twice in a batch runs once)."""
        first: dict[str, int] = {}
        unique: list[Any] = []
        slots = []
        for n, item in enumerate(batch):
            key = item.digest or f"#{n}"
            if key not in first:
                first[key] = len(unique)
                unique.append(item.pixels)
            slots.append(first[key])
        if len(unique) == len(batch):
            return self.predictor.predict(unique)
        self.stats.duplicates += len(batch) - len(unique)
        preds, infer_ms = self.predictor.predict(unique)
        return [preds[k] for k in slots], infer_ms

    def _next_ready(self, timeout_s: float) -> Item | None:
        try:
            item = self.ready.get(timeout=timeout_s) if timeout_s > 0 else self.ready.get_nowait()
        except queue.Empty:
            return None
        if item is CLOSED:
            self.closed = True
            return None
        return item

    def _outcome(self, item: Item, batch: int, infer_ms: float = 0.0, pred: Any = None) -> Outcome:
        topk = None if item.error is not None else pred
        result = answer(
            item.job,
            model=self.predictor.tag,
            worker=self.settings.worker_name,
            meta=item.meta,
            decode_ms=item.decode_ms,
            infer_ms=infer_ms,
            topk=topk,
            error=item.error,
            batch=batch,
        )
        return Outcome(item.job, result, retry=bool(item.error and item.error.retryable), digest=item.digest)

    # -- finish ----------------------------------------------------------------------------------
    def finish(self) -> None:
        """Record finished batches (all that are ready, in one store call); keep them through outages."""
        pending: list[tuple[list[Outcome], float]] = []
        closing, backoff = False, Backoff()
        while not (closing and not pending):
            closing = self._collect(pending, block=not pending) or closing
            if not pending:
                continue
            outcomes = [o for batch, _ in pending for o in batch]
            try:
                called_at = time.monotonic()
                self.store.finish(outcomes)
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

    def _wait_out(self, exc: StoreUnavailable, count: int, backoff: Backoff) -> bool:
        """Wait before recording ``count`` finished jobs again; False once stopping has waited long enough."""
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
        delay_s = min(backoff.next(), left)
        self.stats.store_error(exc, "finish", f", {count} finished job(s) kept, next try in {delay_s:.1f} s")
        time.sleep(delay_s)
        return True

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
                else:
                    pending.append(entry)
                entry = self.done.get_nowait()
        except queue.Empty:
            pass
        return closed

    def _acknowledged(self, pending: list[tuple[list[Outcome], float]]) -> None:
        now = time.monotonic()
        for outcomes, forward_end in pending:
            self.stats.to_publish_ms.extend([(now - forward_end) * 1000] * len(outcomes))
            self.stats.jobs += len(outcomes)
            self.stats.batches += 1
            if self.observer is not None:
                self.observer.observe_batch([o.result for o in outcomes], now - forward_end)
            self.hand.release([o.job for o in outcomes])
