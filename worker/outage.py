"""One log line when Redis stops answering and one when it answers again, whichever thread notices first.

A failover (Sentinel promotes a replica) or a restart makes every store call fail for a few seconds: the
take loop, the finisher and the heartbeat each retry with back-off. Logging each failure gave several lines
per worker per failover; an outage is one event: a warning when the first call fails (what failed, why),
the retries at debug level, and a line when a call succeeds again (how long, how many calls were retried).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("worker.store")


class Outage:
    """Tracks whether the queue store is answering; ``failed`` and ``answered`` may be called from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = None  # monotonic time of the outage's first failure; None while answering
        self.failures = 0

    def failed(self, what: str, exc: Exception, detail: str = "") -> None:
        """A store call failed (``what``: take, finish, heartbeat); logged once per outage."""
        with self.lock:
            self.failures += 1
            first = self.since is None
            if first:
                self.since = time.monotonic()
        if first:
            log.warning("redis unavailable (%s: %s)%s; retrying with back-off until it answers", what, exc, detail)
        else:
            log.debug("redis still unavailable (%s: %s)%s", what, exc, detail)

    def answered(self, called_at: float) -> None:
        """A store call made at ``called_at`` (monotonic) succeeded: ends the outage, if there is one and the
        call was made after it began (a reply to a call already in flight when Redis went away says nothing);
        one attribute read otherwise."""
        if self.since is None:
            return
        with self.lock:
            if self.since is None or called_at < self.since:
                return
            down_s, failures, self.since, self.failures = time.monotonic() - self.since, self.failures, None, 0
        log.warning("redis answers again after %.1f s (%d failed call(s) retried)", down_s, failures)


class ReapAfterOutage:
    """A store's reaper after an outage of its server: the other workers' keys may have expired while they waited
    it out too (Sentinel's default 30 s outlasts the default 20 s TTL); they register again at their next beat,
    so reaping waits ``ttl_s`` from the first answer after a failure (their running jobs are not a dead
    worker's). Per store: with shards, an outage of one shard defers only that shard's reaper."""

    def __init__(self, ttl_s: float, closed: bool = False) -> None:
        # ``closed``: for a TTL from the start too (a worker process): it may be starting just after an outage
        # that the others are still waiting out (a pod restarted during a failover)
        self.ttl_s, self.down, self.reap_from = ttl_s, False, time.monotonic() + ttl_s if closed else 0.0

    def failed(self) -> None:
        self.down = True

    def answered(self) -> None:
        if self.down:
            self.down, self.reap_from = False, time.monotonic() + self.ttl_s

    def allows(self) -> bool:
        """Whether a reaper pass may run now: not while this store's beats fail, nor for a TTL after."""
        return not self.down and time.monotonic() >= self.reap_from
