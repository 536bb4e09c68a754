"""What the Redis store's modules share: RQ's identity for our process, and how a Redis error reads to the
pipeline (``StoreUnavailable``, ``StoreFull``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from rq import Queue, SimpleWorker
from rq.job import Job

from .base import StoreFull, StoreUnavailable
from .printable import shown

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchWorker(SimpleWorker):
    """RQ's identity for our process: registration and the fields ``rq info`` reads. It never runs
    RQ's own one-job-at-a-time loop."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        raise NotImplementedError("BatchWorker runs batches through worker.pipeline")


def unavailable(call: Callable[[], T]) -> T:
    """Run ``call``; a lost or timed-out connection becomes ``StoreUnavailable``, a full Redis
    (maxmemory reached, noeviction) ``StoreFull``: both are retried later with back-off."""
    try:
        return call()
    except redis.OutOfMemoryError as exc:
        raise StoreFull(f"redis is full (maxmemory): {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:  # READONLY: mid-failover
        raise StoreUnavailable(str(exc)) from exc
    except redis.ResponseError as exc:
        if "NOREPLICAS" in str(exc).split():  # min-replicas-to-write: a primary cut off from its replicas
            raise StoreUnavailable(str(exc)) from exc
        log.error("redis refused a call: %s", exc)
        raise StoreUnavailable(f"redis refused: {exc}") from exc
    except redis.RedisError as exc:  # a refusal (NOPERM after an ACL change, a script error): logged, retried
        log.error("redis refused a call: %s", exc)
        raise StoreUnavailable(f"redis refused: {exc}") from exc


def shown_ids(ids: list[Any]) -> str:
    """Ids for a log line, escaped (``worker.store.printable``)."""
    return ", ".join(shown(i) for i in ids)


def feed_groups(connection: redis.Redis, stream: str) -> list[dict[Any, Any]]:
    """``XINFO GROUPS`` of the results feed; none when nothing was fed yet, or the key is not a stream (the
    scripts report that)."""
    try:
        return connection.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower() or str(exc).startswith("WRONGTYPE"):
            return []
        raise
