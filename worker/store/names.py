"""Worker names: a fixed ``--name`` restarts cleanly, and two live workers never share one.

RQ refuses to register a name whose key exists without ``death``. A fixed name restarted after a
crash finds its predecessor's key (until it expires) and, once registered, would hide the
predecessor's started jobs from every reaper (their executions name a worker that looks alive).
So before registering: a name whose key has ``death`` set, or no key, is free; the jobs its
predecessor left are re-queued at once. A key still beating belongs to a live worker: wait at most
one TTL for its heartbeat to stop, then take over (delete its key, re-queue its jobs, register);
while it keeps beating, refuse with ``NameTaken``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from producer.wire import keys

from .base import WrongTypeKeys
from .printable import shown

log = logging.getLogger(__name__)


class NameTaken(RuntimeError):
    """Another live worker is registered, and beating, under this name."""


def claim_name(
    connection: redis.Redis,
    name: str,
    ttl_s: float,
    reap: Callable[[], tuple[list[str], list[str]]],
    stop: threading.Event | None = None,
    poll_s: float = 0.25,
) -> None:
    """Make worker ``name`` ours (see the module's text), waiting at most ``ttl_s`` for a predecessor to stop
    beating; ``reap`` re-queues what it left. Raise ``NameTaken`` if the name is in use."""
    key = keys.worker(name)
    if connection.type(key) in (b"hash", "hash"):
        first = connection.hmget(key, "last_heartbeat", "death")
    else:  # absent, or a key of another type: no worker's (only workers write it); deleted below
        first = [None, None]
    if first[0] is not None and first[1] is None:  # registered and not dead: alive, or crashed recently
        log.warning("worker name %s is registered: waiting up to %d s for its heartbeat to stop", shown(name), ttl_s)
        deadline = time.monotonic() + ttl_s
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            beat = connection.hget(key, "last_heartbeat")
            if beat is None:
                break  # its key expired: gone
            if beat != first[0]:
                raise NameTaken(f"a live worker named {name!r} is still beating; give this one another --name")
            time.sleep(poll_s)
        log.warning("worker %s stopped beating: taking over its name", shown(name))
    connection.delete(key)  # a dead predecessor's key: its started jobs now show as a dead worker's
    try:
        requeued, poison = reap()
    except WrongTypeKeys as exc:  # reported; a later reaper pass re-queues them once the key is deleted
        log.warning("could not re-queue what this name's predecessor left yet: %s", exc)
        return
    if requeued or poison:
        log.warning("re-queued %d job(s) of this name's predecessor (%d failed as poison)", len(requeued), len(poison))
