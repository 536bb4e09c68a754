"""The heartbeat thread: keeps this worker alive in the store, and reaps dead workers' jobs every few seconds.

RQ's own clean-up of abandoned jobs takes about ten minutes. Here every worker refreshes its key
every third of ``--worker-ttl-s`` from this thread, and every ``reap_s`` runs the store's reaper
(atomic: several workers may reap at once) and gives back its own starts whose reply never came.
It also beats soon after a batch is done (it looks every ``current_s``, without Redis; at most once per
``after_batch_s``, a second, so a busy worker does not run a heartbeat script per batch), so the counters
``producer status`` shows (batches, images/s over the last minute) are current within a second after a
burst, not up to a third of the TTL late.
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


RATE_WINDOW_S = 60.0  # images/s "over the last minute"
SAMPLE_EVERY_S = 1.0  # rate samples are kept at least this far apart (64 of them span over a minute)


class Heartbeat(threading.Thread):
    """Beats every ``ttl_s / 3`` and after batches (seen within ``current_s``, at most once per
    ``after_batch_s``), and reaps every ``reap_s``, on behalf of one pipeline."""

    def __init__(
        self,
        store: QueueStore,
        hand: InHand,
        stats: Stats,
        ttl_s: float,
        *,
        reap_s: float = 5.0,
        current_s: float = 0.1,
        after_batch_s: float = 1.0,
        metrics: Any = None,
        health: Any = None,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.store, self.hand, self.stats, self.metrics, self.health = store, hand, stats, metrics, health
        self.ttl_s, self.reap_s, self.current_s, self.after_batch_s = ttl_s, reap_s, current_s, after_batch_s
        self.beaten_at = float("-inf")  # when the last beat was sent (monotonic)
        self.stopping = threading.Event()
        self.samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.beaten_batches = -1  # the batch count the last beat reported
        self.dropped = 0  # the store's dropped-id count already reported
        self.reported: Counter[str] = Counter()  # store errors already reported
        self.misfits: Counter[str] = Counter()  # keys of the wrong type already reported, by key
        self.duplicates = 0  # batch duplicates already reported
        self.lag_groups: set[str] = set()  # the feed-lag series exported at the last reaper pass

    def rate(self, jobs: int, now: float) -> float:
        """Jobs per second over the last minute (since the first beat, in the first minute), ``jobs`` done
        by ``now`` included: the oldest sample within the window is the baseline."""
        if len(self.samples) > 1 and now - self.samples[-2][0] < SAMPLE_EVERY_S:
            self.samples[-1] = (now, jobs)  # beats after every batch: keep the samples a second apart
        else:
            self.samples.append((now, jobs))
        old_t, old_n = next((t, n) for t, n in self.samples if now - t <= RATE_WINDOW_S)
        return round((jobs - old_n) / (now - old_t), 2) if now > old_t else 0.0

    def beat(self) -> None:
        """One heartbeat (with the jobs, batches and images/s that ``producer status`` shows)."""
        jobs, batches = self.stats.jobs, self.stats.batches
        stats = WorkerStats(jobs, batches, self.rate(jobs, time.monotonic()))
        self.beaten_batches, self.beaten_at = batches, time.monotonic()
        try:
            backlog = self.store.heartbeat(stats)
        finally:  # the store's errors count while it is down, not once it answers again
            self.count_store_errors()
        if self.health is not None:
            self.health.redis_answered()
        if self.metrics is not None:
            self.metrics.backlog.set(backlog)
            dropped, self.dropped = self.store.dropped - self.dropped, self.store.dropped
            if dropped > 0:
                self.metrics.dropped.inc(dropped)
            duplicates, self.duplicates = self.stats.duplicates - self.duplicates, self.stats.duplicates
            if duplicates > 0:
                self.metrics.duplicates.inc(duplicates)
            for key, count in self.store.wrong_type_counts().items():
                if count > self.misfits[key]:
                    self.metrics.wrong_types.labels(key).inc(count - self.misfits[key])
                    self.misfits[key] = count

    def count_store_errors(self) -> None:
        """``adclassify_store_errors_total``: the errors counted since the last beat (a failed one included)."""
        if self.metrics is None:
            return
        for kind, count in list(self.stats.store_errors.items()):
            if count > self.reported[kind]:
                self.metrics.store_errors.labels(kind).inc(count - self.reported[kind])
                self.reported[kind] = count

    def feed_lags(self) -> None:
        """The results feed's lag per consumer group, for metrics (read at each reaper pass, not each beat)."""
        if self.metrics is None:
            return
        lags = self.store.feed_lags()
        for group in self.lag_groups - set(lags):  # a group destroyed (a finished backfill): its series goes
            self.metrics.feed_lag.remove(group)
        for group, lag in lags.items():  # None: Redis before 7 does not say
            self.metrics.feed_lag.labels(group).set(float("nan") if lag is None else lag)
        self.lag_groups = set(lags)

    def run(self) -> None:
        next_reap = time.monotonic()
        while True:
            try:
                called_at = time.monotonic()
                self.beat()
                self.stats.outage.answered(called_at)
                if time.monotonic() >= next_reap:  # (the store defers its reaper after an outage)
                    _, poison = self.store.reap()
                    if poison and self.metrics is not None:  # failed here, not by a finish: counted here
                        self.metrics.jobs.labels("poison").inc(len(poison))
                    self.store.give_back(self.hand.snapshot())
                    self.feed_lags()
                    next_reap = time.monotonic() + self.reap_s
            except StoreUnavailable as exc:
                self.stats.store_error(exc, "heartbeat")
            except Exception:  # this thread keeps us alive: log anything unexpected, never die of it
                log.exception("heartbeat: unexpected error (beating on)")
            if not self.wait_next(time.monotonic() + min(self.ttl_s / 3, self.reap_s)):
                return

    def wait_next(self, deadline: float) -> bool:
        """Wait until ``deadline``, or a batch done since the last beat and ``after_batch_s`` since that beat;
        False when stopping."""
        while not self.stopping.wait(max(0.0, min(self.current_s, deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= deadline:
                return True
            if self.stats.batches != self.beaten_batches and now - self.beaten_at >= self.after_batch_s:
                return True
        return False

    def stop(self) -> None:
        """Stop beating (the worker is about to unregister)."""
        self.stopping.set()
        self.join(timeout=5)
