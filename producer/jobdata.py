"""Jobs as the producer writes them: the options, the image read, and RQ's own commands for new jobs
(built here on a client that never connects; a driver sends them), with ``data`` stored uncompressed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job

from .connections import MAX_WAIT_MS
from .ops import Command
from .wire.cache import ASKED
from .wire.jobs import DEFAULT_MAX_IMAGE_BYTES, MAX_TTL_S, TASK_NAME, ImageRef, check_image_size, job_kwargs
from .wire.serializer import MsgpackSerializer

ImageInput = bytes | bytearray | str | os.PathLike | ImageRef  # an ImageRef: a job by reference (image_url)


@dataclass(frozen=True)
class JobOptions:
    """How jobs are enqueued; units in names."""

    job_timeout_s: int = 300
    result_ttl_s: int = 3600
    failure_ttl_s: int = 86400
    retries: int = 2
    max_queue_length: int | None = None  # enqueue raises QueueFull past this many waiting jobs (per shard)
    deadline_s: float | None = None  # default per-job deadline, seconds from enqueue
    compress_data: bool = False  # zlib-compress job data as RQ does by default (images do not shrink: slower)
    # a larger image is refused at enqueue (ImageTooLarge, "image_too_large"): keep it at or below the
    # workers' --max-image-bytes, which refuse more
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    # after each enqueue, WAIT for this many replicas to have the jobs (0: don't wait); fewer within
    # wait_timeout_ms raises NotReplicated (retry with the same job ids: creation is create-if-absent)
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    def __post_init__(self) -> None:
        for name in ("result_ttl_s", "failure_ttl_s"):
            if not -1 <= getattr(self, name) <= MAX_TTL_S:
                raise ValueError(f"{name} must be -1 (for ever) .. {MAX_TTL_S} seconds")
        if self.wait_replicas > 0 and not 0 < self.wait_timeout_ms <= MAX_WAIT_MS:
            # 0 is Redis's "for ever"; longer than the socket timeout would be cut off as a lost connection
            raise ValueError(f"wait_timeout_ms must be 1..{MAX_WAIT_MS} with wait_replicas")


def read_image(image: ImageInput, max_bytes: int | None = None) -> bytes:
    """Bytes as they are; a path is read from disk. ``ImageTooLarge`` past ``max_bytes`` (a file is
    measured before it is read)."""
    if isinstance(image, bytes | bytearray):
        data = bytes(image)
    else:
        if max_bytes is not None:
            check_image_size(Path(image).stat().st_size, max_bytes)
        data = Path(image).read_bytes()
    if max_bytes is not None:
        check_image_size(len(data), max_bytes)
    return data


class PlainDataJob(Job):
    """An RQ job whose ``data`` (the msgpack call ``[func, None, args, kwargs]``) is stored uncompressed.

    RQ's ``Job.to_dict`` zlib-compresses ``data``; JPEG bytes do not shrink (0.1%), and compressing
    them cost the producer ~2 ms per 120 KB. RQ's ``Job.restore`` tries ``zlib.decompress`` and falls
    back to the bytes as stored, and msgpack data of a call starts with 0x94 (an array of 4), which is
    never a valid zlib header (compression method 4, not 8), so every reader (``Job.fetch``, ``rq
    info``, a plain ``rq worker``, our worker's store) reads it unchanged. Everything else is written
    exactly as RQ writes it.
    """

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        """RQ's hash for this job, with ``data`` uncompressed."""
        data = self.data
        self._data = b""  # RQ compresses whatever ``data`` holds: give it nothing to do
        try:
            obj = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self._data = data
        obj["data"] = data
        return obj


class JobWriter:
    """RQ's commands that create jobs: RQ's own ``Queue.enqueue_many`` runs against a recording pipeline of
    a client that never connects, so every shard gets exactly what RQ writes (msgpack, ``Retry``, TTLs)."""

    def __init__(self, queue: str, options: JobOptions) -> None:
        self.options = options
        self._recorder = redis.Redis(host="unused.invalid")  # RQ builds the jobs on it; nothing is sent
        job_class = Job if options.compress_data else PlainDataJob
        self._queue = Queue(queue, connection=self._recorder, serializer=MsgpackSerializer, job_class=job_class)
        self._queue.redis_server_version = (7, 0, 0)  # RQ would ask the server (it only steers LPOS reads)

    def data(
        self, image: ImageInput, job_id: str, meta: dict | None, deadline: float | None, cache: bool = False
    ) -> Any:
        """One job's RQ call data (the image read from disk if it is a path; ``ProtocolError`` for a bad meta,
        ``ImageTooLarge`` for an image over ``JobOptions.max_image_bytes``); ``cache``: the RQ job's meta asks
        the workers to write its result to the result cache (``producer.wire.cache.ASKED``)."""
        if isinstance(image, ImageRef):  # a job by reference: the worker fetches image_url
            payload, name = image, image.url
        else:
            payload = read_image(image, self.options.max_image_bytes)
            # An explicit description: RQ would otherwise build one from repr() of the whole image.
            name = os.fspath(image) if isinstance(image, str | os.PathLike) else f"{len(payload)} bytes"
        opts = self.options
        return Queue.prepare_data(
            TASK_NAME,
            kwargs=job_kwargs(payload, meta, deadline),
            timeout=opts.job_timeout_s,
            result_ttl=opts.result_ttl_s,
            failure_ttl=opts.failure_ttl_s,
            description=f"classify {name}",
            job_id=job_id,
            retry=Retry(max=opts.retries) if opts.retries > 0 else None,
            meta=dict(ASKED) if cache else None,
        )

    def commands(self, datas: Sequence[Any]) -> tuple[Command, ...]:
        """The commands that create these jobs (from ``data``), to run in one transaction."""
        pipe = self._recorder.pipeline()
        self._queue.enqueue_many(datas, pipeline=pipe)
        return tuple(Command(args, options) for args, options in pipe.command_stack)
