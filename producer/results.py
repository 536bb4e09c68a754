"""Reading results: a job's final entry in RQ's result stream, and the best-effort results channel."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from rq.results import Result

from .errors import JobFailed
from .wire.jobs import ProtocolError
from .wire.results import parse_exc_string, validate_result
from .wire.serializer import MsgpackSerializer, SerializationError, loads

log = logging.getLogger(__name__)

_FINAL = {Result.Type.SUCCESSFUL, Result.Type.FAILED, Result.Type.STOPPED, Result.Type.MAX_RETRIES_EXCEEDED}

_PARSER = redis.Redis(host="unused.invalid")  # Result.restore wants a client; parsing sends nothing


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


class Subscription:
    """Results published on the channel, as they arrive (at-least-once: de-duplicate on job_id)."""

    def __init__(self, connection: redis.Redis, channel: str) -> None:
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        # Wait for the subscription to be confirmed so that nothing published after we return is missed.
        self._pubsub.get_message(timeout=5.0, ignore_subscribe_messages=False)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next result, or None when none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = self._pubsub.get_message(timeout=left if left is not None else 3600.0)
            if message is not None and message.get("type") == "message":
                try:
                    return validate_result(loads(message["data"]))
                except (SerializationError, ProtocolError) as exc:
                    log.warning("ignoring a message on the results channel that is not a result: %s", exc)
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            result = self.get(timeout=None)
            if result is not None:
                yield result

    def close(self) -> None:
        """Unsubscribe and close the connection."""
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
