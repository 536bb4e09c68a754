"""``classify`` for a plain ``rq worker``: one job at a time, the same checks and result as the batch worker.

``classify`` is what a plain ``rq worker -w rq.SimpleWorker -S producer.serializer.MsgpackSerializer``
runs, one job at a time, with the model loaded once per process from ``WORKER_MODEL``; every other
setting comes from the same environment twins as the batch worker's flags (``worker.config``). The batch
worker never calls it; it uses the same validation and result format on whole batches.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any

import torch
from rq import get_current_job
from rq.job import Job

from producer.wire.jobs import ImageRef
from producer.wire.keys import results_channel
from producer.wire.results import make_result
from producer.wire.serializer import dumps

from .config import WorkerSettings, settings_from_env
from .decode.cpu import Limits, Preprocess
from .decode.pool import decode_one
from .decode.urls import FetchPolicy
from .errors import JobError
from .jobs import checked_args
from .model import Classifier, load_model

log = logging.getLogger(__name__)


def decode_image(data: bytes, spec: Preprocess, limits: Limits) -> torch.Tensor:
    """One image as a uint8 ``[H, W, 3]`` tensor; bad input raises ``JobError`` (never retried)."""
    result = decode_one(data, spec, limits)
    if result.error is not None:
        raise result.error
    return torch.frombuffer(bytearray(result.pixels), dtype=torch.uint8).view(spec.size[0], spec.size[1], 3)


def ms_since(when: datetime | None, now: datetime) -> float:
    """Milliseconds from ``when`` (a UTC datetime from RQ) to ``now``; 0 when unknown."""
    if when is None:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (now - when).total_seconds() * 1000.0)


@functools.lru_cache(maxsize=1)
def process_settings() -> WorkerSettings:
    """This process's settings, from the environment (``WORKER_MODEL``, ``WORKER_MAX_PIXELS``, ...), read once."""
    return settings_from_env()


@functools.lru_cache(maxsize=1)
def _process_fetcher() -> Any:
    from .decode.fetch import Fetcher, FetchLimits  # urllib3: only for a process that fetches

    settings = process_settings()
    limits = FetchLimits(
        settings.max_image_bytes,
        connect_timeout_s=settings.fetch_connect_timeout_s,
        read_timeout_s=settings.fetch_read_timeout_s,
        total_timeout_s=settings.fetch_timeout_s,
    )
    return Fetcher(FetchPolicy.parse(settings.fetch_allow, settings.fetch_root), limits, pool_size=1)


def fetch_image(ref: ImageRef) -> bytes:
    """An ``image_url`` job's bytes on the plain ``rq worker`` path, under the batch worker's policy and flags'
    environment twins (``WORKER_FETCH_ALLOW``, ``WORKER_FETCH_ROOT``, ...); raise ``JobError``."""
    settings = process_settings()
    if not (settings.fetch_allow.strip() or settings.fetch_root):
        message = "this worker fetches no URLs: WORKER_FETCH_ALLOW and WORKER_FETCH_ROOT are empty"
        raise JobError("forbidden_url", message)
    return _process_fetcher().fetch(ref.url)


@functools.lru_cache(maxsize=1)
def _process_model() -> Classifier:
    settings = process_settings()
    model = load_model(settings.model, device=settings.device, max_batch=1)
    model.warm_up(rounds=1)
    return model


def classify(
    image: bytes | None = None, meta: dict | None = None, deadline: float | None = None, image_url: str | None = None
) -> dict[str, Any]:
    """Classify one image, given as bytes or by ``image_url`` (plain ``rq worker`` path); publish and return the
    result map."""
    job = get_current_job()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    timings = {"queue": ms_since(job.enqueued_at if job else None, started)}
    settings = process_settings()
    model = _process_model()
    limits = Limits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
    worker = f"{socket.gethostname()}:rq:{os.getpid()}"
    job_id = job.id if job else ""
    try:
        given = {"image": image, "image_url": image_url, "meta": meta, "deadline": deadline}
        source, meta = checked_args((), {k: v for k, v in given.items() if v is not None})
        data = fetch_image(source) if isinstance(source, ImageRef) else source
        batch = decode_image(data, model.info.preprocess, limits)[None]
        timings["decode"] = (time.perf_counter() - t0) * 1000
        topk = model.predict(batch, k=settings.topk)[0]
        timings["infer"] = (time.perf_counter() - t0) * 1000 - timings["decode"]
    except JobError as err:
        timings["total"] = timings["queue"] + (time.perf_counter() - t0) * 1000
        final = job is None or not err.retryable or not job.retries_left  # else RQ runs it again: no answer yet
        _publish(
            job if final else None,
            make_result(
                job_id,
                model=model.info.tag,
                worker=worker,
                timings_ms=timings,
                meta=meta if isinstance(meta, dict) else {},
                error=err.as_error(),
            ),
        )
        if job is not None and not err.retryable:
            job.retries_left = 0  # deterministic: a retry would fail the same way
        raise
    timings["total"] = timings["queue"] + (time.perf_counter() - t0) * 1000
    result = make_result(job_id, model=model.info.tag, worker=worker, timings_ms=timings, meta=meta, topk=topk)
    _publish(job, result)
    return result


def _publish(job: Job | None, result: dict[str, Any]) -> None:
    if job is not None:
        job.connection.publish(results_channel(job.origin), dumps(result))
