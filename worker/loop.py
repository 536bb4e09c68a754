"""The worker's main loop: collect -> decode -> predict -> publish -> acknowledge."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import torch
from rq import Queue
from rq.job import UNEVALUATED
from rq.utils import now

from producer.protocol import make_result
from producer.serializer import MsgpackSerializer

from .config import WorkerSettings
from .errors import JobError
from .images import Limits
from .model import Classifier, load_model
from .perf import autotune, choose_threads
from .reaper import Heartbeat, Reaper
from .rqbatch import BatchWorker, Outcome, RQBatch, Taken
from .serve import MAX_BACKOFF_S, Server
from .tasks import decode_image, job_inputs, ms_since

log = logging.getLogger(__name__)

# Test-only hook: an image containing these bytes makes the worker exit at once, like a decoder crash.
CRASH_MARKER = os.environ.get("WORKER_TEST_CRASH_MARKER", "").encode()
SMALL_PAYLOAD_BYTES = 16 * 1024


@dataclass
class Decoded:
    """One job after validation and decoding: a tensor, or the error that stopped it."""

    taken: Taken
    meta: dict[str, Any] = field(default_factory=dict)
    tensor: torch.Tensor | None = None
    error: JobError | None = None
    decode_ms: float = 0.0
    topk: list[tuple[str, float]] | None = None


class BatchRunner:
    """Runs one batch of taken jobs through the model and builds each job's outcome."""

    def __init__(self, model: Classifier, settings: WorkerSettings, pool: ThreadPoolExecutor) -> None:
        self.model = model
        self.settings = settings
        self.pool = pool
        self.limits = Limits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
        self.cap = int(settings.batch_size)  # lowered for good after an out-of-memory error

    def decode(self, taken: Taken) -> Decoded:
        """Validate and decode one job (runs in the thread pool); never raises for bad input."""
        start = time.perf_counter()
        item = Decoded(taken)
        try:
            if taken.read_error is not None or taken.job is None:
                raise JobError("bad_job_data", f"unreadable job hash: {taken.read_error}")
            image, item.meta = job_inputs(taken.job)
            if CRASH_MARKER and CRASH_MARKER in image:  # test-only: a job that kills the worker (poison tests)
                log.error("job %s carries the test crash marker: exiting at once", taken.job_id)
                os._exit(86)
            item.tensor = decode_image(image, self.model.info.preprocess, self.limits)
        except JobError as err:
            item.error = err
            log.warning("job %s failed: %s", taken.job_id, err)
        item.decode_ms = (time.perf_counter() - start) * 1000
        return item

    def predict(self, items: list[Decoded]) -> tuple[list[list[tuple[str, float]] | JobError], float]:
        """Top-k for every decoded item (one forward pass), and the inference time in ms."""
        if not items:
            return [], 0.0
        start = time.perf_counter()
        try:
            preds: list = self._forward(torch.stack([i.tensor for i in items]))
        except (RuntimeError, ValueError) as exc:
            log.exception("model forward failed on a batch of %d", len(items))
            preds = [JobError("model_error", f"{type(exc).__name__}: {exc}", retryable=True)] * len(items)
        return preds, (time.perf_counter() - start) * 1000

    def _forward(self, batch: torch.Tensor) -> list[list[tuple[str, float]]]:
        """Top-k for a batch; on out-of-memory, split it in halves and lower the batch cap for good."""
        try:
            return self.model.predict(batch, k=self.settings.topk)
        except torch.OutOfMemoryError:
            n = batch.shape[0]
            if n == 1:
                raise
            half = (n + 1) // 2
            if half < self.cap:
                self.cap = half
                self.model.buckets = [b for b in self.model.buckets if b < half] + [half]
                log.warning("out of memory at batch %d: batch cap lowered to %d", n, half)
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            return self._forward(batch[:half]) + self._forward(batch[half:])

    def decode_all(self, taken: list[Taken]) -> InFlight:
        """Decode a batch; the result is ready for ``predict``.

        Big images go to the thread pool (Pillow releases the GIL while decoding); small ones are
        decoded here, where a thread hand-off would cost more than the decode (measured: 300 us
        serial vs 430 us pooled per 48 px JPEG).
        """
        started = now()
        sizes = [len(t.job.data) for t in taken if t.job is not None and t.job._data is not UNEVALUATED]
        if len(taken) > 1 and sizes and sum(sizes) / len(sizes) > SMALL_PAYLOAD_BYTES:
            return InFlight(started, list(self.pool.map(self.decode, taken)))
        return InFlight(started, [self.decode(t) for t in taken])

    def submit(self, batch: InFlight, infer: ThreadPoolExecutor) -> InFlight:
        """Start the forward pass of a decoded batch on the inference thread."""
        good = [item for item in batch.decoded if item.error is None]
        batch.future = infer.submit(self.predict, good)
        return batch

    def outcomes(self, batch: InFlight, worker_name: str) -> list[Outcome]:
        """Wait for the batch's forward pass and build every job's outcome."""
        good = [item for item in batch.decoded if item.error is None]
        preds, infer_ms = batch.future.result() if batch.future is not None else self.predict(good)
        for item, pred in zip(good, preds):
            if isinstance(pred, JobError):
                item.error = pred
            else:
                item.tensor, item.topk = None, pred
        size, outcomes = len(batch.decoded), []
        for item in batch.decoded:
            job = item.taken.job
            queue_ms = ms_since(job.enqueued_at if job else None, batch.started)
            timings = {"queue": queue_ms, "decode": item.decode_ms, "infer": 0.0 if item.error else infer_ms}
            timings["total"] = queue_ms + ms_since(batch.started, now())
            result = make_result(
                item.taken.job_id, model=self.model.info.tag, worker=worker_name, timings_ms=timings,
                meta=item.meta, topk=item.topk, error=item.error.as_error() if item.error else None, batch=size,
            )  # fmt: skip
            outcomes.append(Outcome(item.taken, result, retry=bool(item.error and item.error.retryable)))
        return outcomes

    def run(self, taken: list[Taken], worker_name: str) -> list[Outcome]:
        """Decode in parallel, predict the good ones together, build every outcome (no overlap)."""
        return self.outcomes(self.decode_all(taken), worker_name)


@dataclass
class InFlight:
    """A decoded batch, and its forward pass once submitted."""

    started: Any
    decoded: list[Decoded]
    future: Future | None = None

    @property
    def taken(self) -> list[Taken]:
        return [item.taken for item in self.decoded]


def prepare_model(settings: WorkerSettings) -> tuple[Classifier, WorkerSettings]:
    """Load and warm the model; with ``--batch-size auto`` time the buckets and settle the batch size."""
    auto = settings.batch_size == "auto"
    max_batch = settings.max_batch_size if auto else int(settings.batch_size)
    model = load_model(settings.model, settings.device, max_batch, settings.precision)
    warm = model.warm_up()
    log.info("warmed up buckets=%s ms=%s", model.buckets, {k: round(v * 1000, 1) for k, v in warm.items()})
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    elif model.device.type == "cpu":
        choose_threads(model, max_batch)
    if auto:
        chosen, _ = autotune(model, max_batch, settings.max_batch_latency_ms or None)
        settings = replace(settings, batch_size=chosen)
    return model, settings


def run(settings: WorkerSettings, stop: threading.Event) -> int:
    """Load and warm the model, register with RQ, then process batches until ``stop`` is set."""
    loading = time.perf_counter()
    model, settings = prepare_model(settings)
    metrics = None
    if settings.metrics_port:
        from .metrics import Metrics

        metrics = Metrics(settings.metrics_port, settings.device)
        metrics.warm_up.set(time.perf_counter() - loading)
    registered = _register(settings, stop)
    if registered is None:
        return 0
    worker, batches = registered
    queue = batches.queue
    reaper = Reaper(batches, settings.max_deliveries)
    heartbeat = Heartbeat(worker, redis.Redis.from_url(settings.redis_url), reaper, settings.worker_ttl_s,
                          reap_s=min(5.0, settings.worker_ttl_s / 2))  # fmt: skip
    heartbeat.start()
    log.info("worker %s listening on queue=%s", worker.name, queue.name)
    processed = 0
    try:
        with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:
            server = Server(settings, stop, batches, BatchRunner(model, settings, pool))
            heartbeat.in_hand = server.in_hand
            heartbeat.counts = lambda: (server.processed, server.batches_done)
            server.metrics = heartbeat.metrics = metrics
            processed = server.serve()
    finally:
        heartbeat.stop()
        with contextlib.suppress(redis.RedisError):
            worker.register_death()
        log.info("worker %s stopped after %d jobs", worker.name, processed)
    return processed


def _register(settings: WorkerSettings, stop: threading.Event) -> tuple[BatchWorker, RQBatch] | None:
    """Register with RQ and load the scripts, waiting out a Redis that is down (capped back-off)."""
    backoff_s = 0.5
    connection = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    while not stop.is_set():
        try:
            queue = Queue(settings.queue, connection=connection, serializer=MsgpackSerializer)
            worker = BatchWorker([queue], connection=connection, name=settings.worker_name,
                                 serializer=MsgpackSerializer, worker_ttl=settings.worker_ttl_s)  # fmt: skip
            batches = RQBatch(worker, queue)
            worker.register_birth()
            batches.scripts.load()
            return worker, batches
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis unavailable at start (%s); retrying in %.1f s", exc, backoff_s)
            stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
    return None
