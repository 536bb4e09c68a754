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
from collections import deque
from collections.abc import Callable
from typing import Any

from producer.wire.jobs import ImageRef

from .backoff import Backoff
from .batching import next_batch
from .decode import Decoder, DecodeResult, Fetched, Fetches, NoFetch
from .errors import JobError
from .finishing import CLOSED, Answered, FinishStage
from .jobs import job_inputs
from .progress import InHand, Item, Observer, PipelineSettings, Predicts, ShutdownIncomplete, StageFailed, Stats
from .store import JobRecord, QueueStore, StoreUnavailable, shown
from .tracing import Tracing

log = logging.getLogger(__name__)
BROKEN_AFTER = 3  # batches in a row that fail in the model: the device (or the model) is broken


class Pipeline(FinishStage):
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
        self.health = health
        self.failed_batches = 0  # forward passes in a row whose every job failed in the model
        self.hand, self.stats = hand or InHand(), stats or Stats()
        self.limit = max(1, settings.batches_in_hand) * predictor.cap
        self.min_take = max(1, predictor.cap // 2)  # a full hand takes again once half a batch has room
        self.ready: queue.Queue = queue.Queue(maxsize=self.limit + 1)  # lists of decoded items, for a batch
        # a decoder that hands back a call at a time (the GPU's): a busy model lets a call in flight complete
        self.call_wait_s = settings.max_wait_ms / 1000 if decoder.backend == "gpu" else 0.0
        self.staged: deque[Item] = deque()  # the rest of the list the batcher took from ``ready`` (its thread only)
        self.done: queue.Queue = queue.Queue()  # outcomes waiting to be recorded (bounded by the hand)
        self.closed = False
        self.decoding = 0  # images submitted to the decoder and not yet back
        self.fetching: dict[str, Item] = {}  # by execution: URLs submitted to the fetch stage, not yet back
        self.unstarted = 0  # jobs handed back at a stop before they started: image not fetched, or a suspect not run
        self.stopping_since: float | None = None
        self.unrecorded = 0  # finished jobs given up on at shutdown (the store stayed unavailable)
        self.lock = threading.Lock()
        self.failure: tuple[str, BaseException] | None = None  # a stage that died: its name and error

    def run(self) -> int:
        """take -> decode -> batch -> infer -> finish; return the number of jobs finished."""
        stages = [
            threading.Thread(target=self._guarded, args=(stage,), name=stage.__name__, daemon=True)
            for stage in (self.take, self.infer, self.finish)
        ]
        for stage in stages:
            stage.start()
        for stage in stages:
            while stage.is_alive() and self.failure is None:  # wake up now and then: a signal may have landed on
                stage.join(0.2)  # another thread, and its Python handler runs only when this thread runs bytecode
        if self.failure is not None:  # the other stages may wait for ever on the one that died: not for them
            raise StageFailed(f"the {self.failure[0]} stage failed: {self.failure[1]!r}") from self.failure[1]
        log.info("pipeline stopped: %s", self.stats.summary())
        if self.unrecorded:
            raise ShutdownIncomplete(f"{self.unrecorded} finished job(s) not recorded: the queue store was unavailable")
        return self.stats.jobs

    def _guarded(self, stage: Callable[[], None]) -> None:
        """Run a stage; an error it does not handle ends the worker (the watchdog exits at once, its jobs go back
        by the reaper) instead of leaving the other stages waiting on it for ever with jobs in hand."""
        try:
            stage()
        except BaseException as exc:
            log.exception("the %s stage failed: the worker ends (its jobs in hand are re-queued)", stage.__name__)
            self.failure = (stage.__name__, exc)
            self.stop.set()
            if self.health is not None:
                self.health.break_down(f"the {stage.__name__} stage failed: {exc!r}")

    # -- take and decode -------------------------------------------------------------------------
    def take(self) -> None:
        """Take jobs while there is room in hand; each goes to decoding at once."""
        backoff = Backoff()
        while not self.stop.is_set():
            held = self.hand.wait_until(lambda n: n <= self.limit - self.min_take, self.stop)
            if self.stop.is_set():
                break
            try:
                called_at = time.monotonic()
                jobs = self.store.take(min(self.limit - held, self.predictor.cap), self.settings.idle_wait_ms / 1000)
                backoff.reset()
                self.stats.outage.answered(called_at)
                if self.health is not None:
                    self.health.take_answered()
            except StoreUnavailable as exc:
                if self.health is not None:  # not ready once every take failed for a TTL (/readyz)
                    self.health.take_failed(exc)
                delay_s = backoff.next()
                self.stats.store_error(exc, "take", f", next try in {delay_s:.1f} s")
                self.stop.wait(delay_s)
                continue
            if not jobs and self.settings.burst:  # done once the queue is empty with nothing in hand
                if held == 0:
                    self.stop.set()
                self.hand.wait_until(lambda n: n == 0)
            self.hand.add(jobs)
            self._admit_all(jobs)
        self._close_fetches()  # every fetched image has gone on to the decoder, or to ``done``
        self.decoder.close()  # every submitted image has reached ``ready`` or ``done``
        self.ready.put(CLOSED)

    def _admit_all(self, jobs: list[JobRecord]) -> None:
        """A take's jobs: their images go to the decoder in one hand-off; suspects alone, after the others."""
        pairs = [pair for job in jobs if not job.lost and (pair := self._admit(job)) is not None]
        self._decode(pairs)
        suspects = [job for job in jobs if job.lost]  # one per script call: a sweep of shards or queues brings more
        for k, job in enumerate(suspects):
            if not self._alone(job, behind=len(suspects) - k - 1):
                self.unstarted += len(suspects) - k
                log.warning("stopping: %d job(s) lost with a worker before go back to the queue", len(suspects) - k)
                self.hand.release(suspects[k:])
                return

    def _admit(self, job: JobRecord) -> tuple[Item, bytes] | None:
        """Check a job's call; its item and image bytes when they go to the decoder now (a URL goes to the
        fetch stage first, a bad call straight to ``done``)."""
        item = Item(job)
        try:
            image, item.meta = job_inputs(job)
        except JobError as err:
            item.error = err
            log.warning("job %s failed: %s", shown(job.job_id), shown(str(err)))
            self.done.put(([self._outcome(item, 1)], time.monotonic()))
            return None
        if isinstance(image, ImageRef):  # fetched on the fetch stage's threads, then decoded
            with self.lock:
                self.fetching[job.execution] = item
            self.fetcher.submit(image.url, lambda fetched: self._fetched(item, fetched))
            return None
        return item, image

    def _fetched(self, item: Item, fetched: Fetched) -> None:
        with self.lock:
            self.fetching.pop(item.job.execution, None)
        item.fetch_ms, item.fetched = fetched.ms, fetched.data is not None
        if fetched.data is None:
            self._hand_on(item, DecodeResult(None, fetched.error, fetched.started, fetched.ms))
            return
        self._decode([(item, fetched.data)])

    def _close_fetches(self) -> None:
        """Close the fetch stage; when stopping, the URLs it had not started are not waited for: their jobs leave
        the hand unfinished, for the store's give-back at the end (re-queued, not counted as a failure)."""
        self.fetcher.close(drop_queued=self.stop.is_set())
        with self.lock:
            dropped, self.fetching = list(self.fetching.values()), {}
        if dropped:
            self.unstarted += len(dropped)
            log.warning("stopping: %d job(s) whose image was not fetched yet go back to the queue", len(dropped))
            self.hand.release([item.job for item in dropped])

    def _decode(self, pairs: list[tuple[Item, bytes]]) -> None:
        """Submit images in one hand-off; results come back in lists (one per decode call on a GPU)."""
        if not pairs:
            return
        with self.lock:
            self.decoding += len(pairs)
        items, images = [item for item, _ in pairs], [image for _, image in pairs]
        self.decoder.submit_many(images, lambda results: self._decoded(items, images, results))

    def _decoded(self, items: list[Item], images: list[bytes], results: list[tuple[int, DecodeResult]]) -> None:
        ready = []
        for i, result in results:
            item = items[i]
            item.image = images[i]  # a reference: the result cache's digest is taken at finish, if the cache is on
            if self._hand_on(item, result):
                ready.append(item)
        if ready:
            self.ready.put(ready)  # one hand-off to the batcher, before the count drops (it waits on both)
        with self.lock:
            self.decoding -= len(results)

    def _hand_on(self, item: Item, result: DecodeResult) -> bool:
        """Record a decode's result on its item; True when it goes on to a batch, else its failure is done."""
        self.stats.to_decode_ms.append(max(0.0, result.started - item.job.taken_at) * 1000)
        item.pixels, item.error, item.decode_ms = result.pixels, result.error, result.ms
        if item.error is None:
            return True
        log.warning("job %s failed: %s", shown(item.job.job_id), shown(str(item.error)))
        self.done.put(([self._outcome(item, 1)], time.monotonic()))
        return False

    def _alone(self, job: JobRecord, behind: int) -> bool:
        """A job lost with a worker before runs alone (it may crash us): nothing else in hand but the ``behind``
        suspects of the same take that wait, unstarted, to run alone after it. False when a stop came first."""
        self.hand.wait_until(lambda n: n <= behind + 1, self.stop)
        if self.stop.is_set():
            return False
        log.warning("job %s was lost with a worker %d time(s) before: running it alone", shown(job.job_id), job.lost)
        pair = self._admit(job)
        self._decode([pair] if pair else [])
        self.hand.wait_until(lambda n: n <= behind)
        return True

    # -- batch and infer ---------------------------------------------------------------------------
    def infer(self) -> None:
        """Form batches from decoded jobs and run them; busy -> no extra wait (see ``batching``). On a device
        that runs a batch on while the host goes on (CUDA), the next batch is formed and launched before the
        last one's answers are read, unless nothing is ready to form it from."""
        busy, running = False, None
        while True:
            if running is not None and (not self.predictor.overlaps or not (self.staged or self.ready.qsize())):
                self._answer(*running)  # nothing to launch meanwhile: its answers now, not after a wait
                running = None
            batch = next_batch(
                self._next_ready,
                max_items=self.predictor.cap,
                busy=busy,
                idle_wait_s=0.2,
                max_wait_s=self.settings.max_wait_ms / 1000,
                taken_at=lambda i: i.job.taken_at,
                decoding=lambda: self.decoding,
                call_wait_s=self.call_wait_s,
            )
            busy = bool(batch)
            launched = (batch, *self._launch(batch)) if batch else None
            if running is not None:
                self._answer(*running)
            running = launched
            if running is None and not batch and self.closed:
                break
        self.done.put(CLOSED)

    def _launch(self, batch: list[Item]) -> tuple[Any, list[int] | None]:
        """One forward pass over the batch's distinct photos (a photo twice in a batch runs once): the launched
        pass and, with repeats, which prediction is each item's."""
        first: dict[Any, int] = {}  # by size and last bytes (cheap), then compared in full: no hashing here
        unique: list[Any] = []
        images: list[bytes | None] = []
        slots = []
        for n, item in enumerate(batch):
            key = (len(item.image), item.image[-64:]) if item.image is not None else n
            k = first.get(key)
            if k is None or images[k] != item.image:  # new, or the same size and tail but other bytes
                first[key if k is None else (key, n)] = k = len(unique)
                unique.append(item.pixels)
                images.append(item.image)
            slots.append(k)
        if len(unique) == len(batch):
            return self.predictor.launch(unique), None
        self.stats.duplicates += len(batch) - len(unique)
        if (gate := getattr(self.decoder, "gate", None)) is not None:  # the CPU pools' (decodes vs forward passes)
            gate.passed_over(len(batch) - len(unique))
        return self.predictor.launch(unique), slots

    def _answer(self, batch: list[Item], launched: Any, slots: list[int] | None) -> None:
        """Wait for a launched batch's answers and hand them to the finish stage, which builds the results
        (``_outcomes``): the infer thread goes back to forming and launching batches."""
        preds, infer_ms = launched.result()
        if slots is not None:
            preds = [preds[k] for k in slots]
        self._check_model(preds)
        self.progressed()
        # the tag of the model that ran it (a swap may land between its launch and now)
        self.done.put((Answered(batch, preds, infer_ms, launched.tag), time.monotonic()))

    def _check_model(self, preds: list[Any]) -> None:
        """A model that failed ``BROKEN_AFTER`` batches in a row is broken (a GPU in a sticky error state fails
        each in milliseconds, and would fail the queue's jobs faster than healthy workers run them): the watchdog
        ends this worker, and this thread runs no more batches meanwhile (these jobs go back with the others)."""
        failed = bool(preds) and all(isinstance(p, JobError) and p.kind == "model_error" for p in preds)
        self.failed_batches = self.failed_batches + 1 if failed else 0
        if self.failed_batches >= BROKEN_AFTER and self.health is not None:
            self.health.break_down(f"{self.failed_batches} batches in a row failed in the model ({preds[0].message})")
            threading.Event().wait()  # until the watchdog ends the process

    def _next_ready(self, timeout_s: float) -> Item | None:
        if self.staged:
            return self.staged.popleft()
        try:
            got = self.ready.get(timeout=timeout_s) if timeout_s > 0 else self.ready.get_nowait()
        except queue.Empty:
            return None
        if got is CLOSED:
            self.closed = True
            return None
        self.staged.extend(got[1:])
        return got[0]
