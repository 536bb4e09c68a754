"""A job's final result: reading RQ's result stream of the job until a final entry comes (a procedure,
``producer.ops``), and what such an entry means (the result map, or ``JobFailed``)."""

from __future__ import annotations

import time
from typing import Any

import redis
from rq.results import Result

from .cancel import CANCELED_ERROR
from .errors import JobFailed, JobTimeout
from .ops import Procedure, Sleep, call
from .wire import keys
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
    (also for a job canceled before it ran, which gets no result) or ``JobTimeout`` after ``timeout_s``.
    While Redis is unreachable (restarting), it waits and reads again until the deadline."""
    deadline = time.monotonic() + timeout_s
    stream, last_id = keys.results(job_id), "0-0"
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            exists = yield call(shard, "EXISTS", keys.job(job_id))
            raise JobTimeout(job_id, timeout_s, "" if exists else " (no such job)")
        try:
            response = yield call(shard, "XREAD", "BLOCK", min(left_ms, MAX_BLOCK_MS), "STREAMS", stream, last_id)
        except (redis.ConnectionError, redis.TimeoutError):
            yield Sleep(min(RECONNECT_WAIT_S, max(0.0, deadline - time.monotonic())))
            continue
        for result_id, payload in response[0][1] if response else []:
            last_id = result_id
            final = final_result(job_id, result_id, payload)
            if final is not None:
                return final
        if not response and (yield call(shard, "HGET", keys.job(job_id), "status")) == b"canceled":
            raise JobFailed(job_id, dict(CANCELED_ERROR))  # canceled before it ran: no result will come
