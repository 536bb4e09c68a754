"""A job's final result: reading RQ's result stream of the job until a final entry comes (a procedure,
``producer.ops``), what such an entry means (the result map, or ``JobFailed``), and a lean result's meta."""

from __future__ import annotations

import time
from typing import Any

import redis
from rq.results import Result

from .cancel import CANCELED_ERROR
from .errors import JobFailed, JobTimeout
from .ops import Batch, Procedure, Sleep, call, command
from .wire import keys
from .wire.jobs import meta_of
from .wire.results import parse_exc_string, validate_result
from .wire.serializer import MsgpackSerializer

_FINAL = {Result.Type.SUCCESSFUL, Result.Type.FAILED, Result.Type.STOPPED, Result.Type.MAX_RETRIES_EXCEEDED}

_PARSER = redis.Redis(host="unused.invalid")  # Result.restore wants a client; parsing sends nothing
MAX_BLOCK_MS = 1000  # short blocks: a client's socket timeout (redis-py's default is 5 s) must not cut one off
RECONNECT_WAIT_S = 0.5


def final_result(job_id: str, result_id: bytes, payload: dict) -> dict[str, Any] | None:
    """A result-stream entry as the job's final result map; None if not final; ``JobFailed`` if failed."""
    res = Result.restore(job_id, result_id.decode(), payload, connection=_PARSER, serializer=MsgpackSerializer)
    if res.type not in _FINAL:
        return None
    if res.type == Result.Type.SUCCESSFUL and isinstance(res.return_value, dict):
        value = validate_result(res.return_value)
        if value.get("ok", True):
            return value
        raise JobFailed(job_id, value.get("error") or {}, value)
    raise JobFailed(job_id, parse_exc_string(res.exc_string))


def wait_for_result(shard: int, job_id: str, timeout_s: float) -> Procedure[dict[str, Any]]:
    """The job's final result from its result stream (XREAD BLOCK: durable, no pub/sub race); ``JobFailed``
    (also for a canceled job, at once: one canceled before it ran gets no result) or ``JobTimeout`` after
    ``timeout_s``. The first read does not block, so a result already there, or a cancel, is answered at
    once, even with ``timeout_s`` 0. While Redis is unreachable (restarting), it waits and reads again until
    the deadline."""
    deadline = time.monotonic() + timeout_s
    stream, job_key, last_id = keys.results(job_id), keys.job(job_id), "0-0"
    block: tuple[Any, ...] = ()  # the first read: no BLOCK
    while True:
        try:
            response, status, requeued_after = yield Batch(
                shard,
                (
                    command("XREAD", *block, "STREAMS", stream, last_id),
                    command("HGET", job_key, "status"),
                    command("HGET", job_key, "requeued_after"),  # a requeue's earlier results are history
                ),
            )
        except redis.AuthenticationError:  # wrong credentials are no outage to wait out
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() >= deadline:  # no EXISTS after it: a silent server would hold the caller again
                raise JobTimeout(job_id, timeout_s, f" (Redis unavailable: {exc})") from exc
            response, status, requeued_after = None, None, None
            yield Sleep(min(RECONNECT_WAIT_S, max(0.0, deadline - time.monotonic())))
        for result_id, payload in response[0][1] if response else []:
            last_id = result_id
            if requeued_after and stream_id(result_id) <= stream_id(requeued_after):
                continue  # a failure before ``python -m producer requeue``: this run's result comes later
            final = final_result(job_id, result_id, payload)
            if final is not None:
                yield from with_meta(shard, [final])
                return final
        if status == b"canceled" or status == "canceled":
            # canceled: before it ran no result comes; while it ran, its worker's comes, failed "canceled" too
            raise JobFailed(job_id, dict(CANCELED_ERROR))
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            try:
                exists = yield call(shard, "EXISTS", job_key)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise JobTimeout(job_id, timeout_s, f" (Redis unavailable: {exc})") from exc
            raise JobTimeout(job_id, timeout_s, "" if exists else " (no such job)")
        block = ("BLOCK", min(left_ms, MAX_BLOCK_MS))


def stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a comparable pair."""
    ms, _, seq = (value.decode() if isinstance(value, bytes) else value).partition("-")
    return int(ms), int(seq or 0)


def with_meta(shard: int, results: list[dict[str, Any]]) -> Procedure[None]:
    """Give results written lean on a nearly full Redis (``meta`` nil: ``LEAN_AFTER_BYTES``) their jobs' meta,
    from the jobs' data, in one round trip; it stays nil for a job that is gone."""
    lean = [result for result in results if result.get("meta") is None]
    if lean:
        data = yield Batch(shard, tuple(command("HGET", keys.job(result["job_id"]), "data") for result in lean))
        for result, job_data in zip(lean, data, strict=True):
            result["meta"] = meta_of(job_data)
