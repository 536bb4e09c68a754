"""What a job asks for and how it is answered: the allow-list check, argument checks and the result map (pure)."""

from __future__ import annotations

import time
from typing import Any

from producer.wire.jobs import MAX_META_BYTES, ImageRef, ProtocolError, allowed, parse_job_args
from producer.wire.results import make_result
from producer.wire.serializer import SerializationError, dumps

from .errors import JobError
from .store import JobRecord


def job_inputs(job: JobRecord) -> tuple[bytes | ImageRef, dict[str, Any]]:
    """A taken job's ``(image, meta)`` after the allow-list and argument checks (the image is an ``ImageRef``
    for a job carrying ``image_url``); raise ``JobError``."""
    if job.read_error is not None:
        raise JobError("bad_job_data", f"unreadable job data: {job.read_error}")
    if not allowed(job.func_name):
        raise JobError("forbidden_function", f"function {job.func_name!r} is not allow-listed")
    return checked_args(job.args, job.kwargs, now=job.now())


def checked_args(args: Any, kwargs: Any, now: float | None = None) -> tuple[bytes | ImageRef, dict[str, Any]]:
    """Validate classify's arguments and deadline (against ``now``, Unix seconds; default this
    machine's clock); raise ``JobError`` (``bad_request``, ``expired``)."""
    try:
        image, meta = parse_job_args(args, kwargs)
        meta_bytes = len(dumps(meta))
    except (ProtocolError, SerializationError) as exc:
        raise JobError("bad_request", str(exc)) from exc
    if meta_bytes > MAX_META_BYTES:
        raise JobError("bad_request", f"meta is {meta_bytes} bytes, over the limit of {MAX_META_BYTES}")
    deadline = kwargs.get("deadline")
    now = time.time() if now is None else now
    if deadline is not None and now > deadline:
        late = now - deadline
        raise JobError("expired", f"the job's deadline passed {late:.3f} s before it could run; not classified")
    return image, meta


def answer(
    job: JobRecord,
    *,
    model: str,
    worker: str,
    meta: dict[str, Any],
    decode_ms: float = 0.0,
    infer_ms: float = 0.0,
    topk: list[tuple[str, float]] | None = None,
    error: JobError | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """The job's result map, with its timings: queue (enqueue to start), decode, infer, total (to now)."""
    enqueued = job.enqueued_at if job.enqueued_at is not None else job.started_at
    timings = {
        "queue": max(0.0, job.started_at - enqueued) * 1000,
        "decode": decode_ms,
        "infer": 0.0 if error else infer_ms,
        "total": max(0.0, job.now() - enqueued) * 1000,
    }
    return make_result(
        job.job_id,
        model=model,
        worker=worker,
        timings_ms=timings,
        meta=meta,
        topk=topk,
        error=error.as_error() if error else None,
        batch=batch,
    )
