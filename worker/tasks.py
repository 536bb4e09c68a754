"""The allow-list of job functions, job validation, and ``classify`` for a plain ``rq worker``.

``classify`` is what a plain ``rq worker -w rq.SimpleWorker -S producer.serializer.MsgpackSerializer``
runs, one job at a time, with the model loaded once per process from ``WORKER_MODEL``. The batch
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

from rq import get_current_job
from rq.exceptions import DeserializationError
from rq.job import Job

from producer.protocol import (
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_META_BYTES,
    TASK_NAME,
    ProtocolError,
    job_kwargs,
    make_result,
    parse_job_args,
    results_channel,
)
from producer.serializer import SerializationError, dumps

from .errors import JobError
from .images import ImageError, Limits, Preprocess, decode
from .model import Classifier, load_model

log = logging.getLogger(__name__)

ALLOWED_TASKS = frozenset({TASK_NAME})


def job_inputs(job: Job) -> tuple[bytes, dict[str, Any]]:
    """A job's ``(image, meta)`` after checking its function against the allow-list.

    The function name is compared as a string: a name outside the list is never imported.
    """
    try:
        name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError as exc:
        raise JobError("bad_job_data", f"job data is not msgpack job data: {exc.__cause__ or exc}") from exc
    if name not in ALLOWED_TASKS or instance is not None:
        raise JobError("forbidden_function", f"function {name!r} is not allow-listed")
    return checked_args(args, kwargs)


def checked_args(args: Any, kwargs: Any) -> tuple[bytes, dict[str, Any]]:
    """Validate classify's arguments; raise ``JobError("bad_request")``."""
    try:
        image, meta = parse_job_args(args, kwargs)
        meta_bytes = len(dumps(meta))
    except (ProtocolError, SerializationError) as exc:
        raise JobError("bad_request", str(exc)) from exc
    if meta_bytes > MAX_META_BYTES:
        raise JobError("bad_request", f"meta is {meta_bytes} bytes, over the limit of {MAX_META_BYTES}")
    deadline = kwargs.get("deadline")
    if deadline is not None and time.time() > deadline:
        late = time.time() - deadline
        raise JobError("expired", f"the job's deadline passed {late:.3f} s before it could run; not classified")
    return image, meta


def decode_image(data: bytes, spec: Preprocess, limits: Limits) -> Any:
    """``images.decode`` with its errors as ``JobError`` (deterministic: never retried)."""
    try:
        return decode(data, spec, limits)
    except ImageError as exc:
        raise JobError(exc.kind, str(exc)) from exc


def ms_since(when: datetime | None, now: datetime) -> float:
    """Milliseconds from ``when`` (a UTC datetime from RQ) to ``now``; 0 when unknown."""
    if when is None:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (now - when).total_seconds() * 1000.0)


@functools.lru_cache(maxsize=2)
def _process_model(path: str, device: str) -> Classifier:
    model = load_model(path, device=device, max_batch=1)
    model.warm_up(rounds=1)
    return model


def classify(image: bytes, meta: dict | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Classify one image (plain ``rq worker`` path); publish and return the result map."""
    job = get_current_job()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    timings = {"queue": ms_since(job.enqueued_at if job else None, started)}
    model = _process_model(os.environ["WORKER_MODEL"], os.environ.get("WORKER_DEVICE", "cpu"))
    limits = Limits(max_bytes=int(os.environ.get("WORKER_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES)))
    worker = f"{socket.gethostname()}:rq:{os.getpid()}"
    job_id = job.id if job else ""
    try:
        image, meta = checked_args((), job_kwargs(image, meta, deadline))
        batch = decode_image(image, model.info.preprocess, limits)[None]
        timings["decode"] = (time.perf_counter() - t0) * 1000
        topk = model.predict(batch, k=int(os.environ.get("WORKER_TOPK", "5")))[0]
        timings["infer"] = (time.perf_counter() - t0) * 1000 - timings["decode"]
    except JobError as err:
        timings["total"] = timings["queue"] + (time.perf_counter() - t0) * 1000
        _publish(job, make_result(job_id, model=model.info.tag, worker=worker, timings_ms=timings,
                                  meta=meta if isinstance(meta, dict) else {}, error=err.as_error()))
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
