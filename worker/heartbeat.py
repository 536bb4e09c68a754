"""The heartbeat thread: keeps this worker alive in the store, and reaps dead workers' jobs every few seconds.

RQ's own clean-up of abandoned jobs takes about ten minutes. Here every worker refreshes its key
every third of ``--worker-ttl-s`` from this thread, and every ``reap_s`` runs the store's reaper
(atomic: several workers may reap at once) and gives back its own starts whose reply never came.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Any

from .progress import InHand, Stats
from .store import QueueStore, StoreUnavailable, WorkerStats

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Beats every ``ttl_s / 3`` and reaps every ``reap_s`` on behalf of one pipeline."""

    def __init__(self, store: QueueStore, hand: InHand, stats: Stats, ttl_s: float, *, reap_s: float = 5.0,
                 metrics: Any = None, health: Any = None) -> None:  # fmt: skip
        super().__init__(name="heartbeat", daemon=True)
        self.store, self.hand, self.stats, self.metrics, self.health = store, hand, stats, metrics, health
        self.ttl_s, self.reap_s = ttl_s, reap_s
        self.stopping = threading.Event()
        self.samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.dropped = 0  # the store's dropped-id count already reported
        self.reported: Counter[str] = Counter()  # store errors already reported

    def rate(self, jobs: int, now: float) -> float:
        """Jobs per second over the last minute of samples."""
        self.samples.append((now, jobs))
        old_t, old_n = next(((t, n) for t, n in self.samples if now - t <= 60), (now, jobs))
        return round((jobs - old_n) / (now - old_t), 2) if now > old_t else 0.0

    def beat(self) -> None:
        """One heartbeat (with the jobs, batches and images/s that ``producer status`` shows)."""
        jobs = self.stats.jobs
        stats = WorkerStats(jobs, self.stats.batches, self.rate(jobs, time.monotonic()))
        backlog = self.store.heartbeat(stats)
        if self.health is not None:
            self.health.redis_answered()
        if self.metrics is not None:
            self.metrics.backlog.set(backlog)
            dropped, self.dropped = self.store.dropped - self.dropped, self.store.dropped
            if dropped > 0:
                self.metrics.dropped.inc(dropped)
            for group, lag in getattr(self.store, "feed_lags", dict)().items():
                if lag is not None:
                    self.metrics.feed_lag.labels(group).set(lag)
            for kind, count in self.stats.store_errors.items():
                self.metrics.store_errors.labels(kind).inc(count - self.reported[kind])
                self.reported[kind] = count

    def run(self) -> None:
        next_reap = time.monotonic()
        while True:
            try:
                self.beat()
                if time.monotonic() >= next_reap:
                    self.store.reap()
                    self.store.give_back(self.hand.snapshot())
                    next_reap = time.monotonic() + self.reap_s
            except StoreUnavailable as exc:
                self.stats.store_error(exc)
                log.warning("heartbeat: queue store unavailable: %s", exc)
            except Exception:  # this thread keeps us alive: log anything unexpected, never die of it
                log.exception("heartbeat: unexpected error (beating on)")
            if self.stopping.wait(min(self.ttl_s / 3, self.reap_s)):
                return

    def stop(self) -> None:
        """Stop beating (the worker is about to unregister)."""
        self.stopping.set()
        self.join(timeout=5)
