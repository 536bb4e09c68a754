"""Several Redis servers (shards), and several queues by priority, behind one queue store.

Each shard is a whole RQ world on its server. With ``--queue high,default`` every server holds one
store per queue, and a take serves the highest-priority non-empty queue first (strictly, as
``rq worker high default`` does); the shards of one priority share it fairly.

The worker takes from every shard, fairly: each take sweeps the shards without blocking, starting
one further along each time, so none starves. With nothing queued anywhere, one waiter thread per
shard blocks on that shard's queue (BLMOVE into its intermediate list, as the single-server take
does), and the first id to arrive on any shard ends the wait: the idle round trip is the same as
with one server. An id a waiter moved after the take stopped waiting stays in that shard's
intermediate list until the next take starts it, or that shard's reaper gives it back (never
both: the start checks the list). A batch may mix shards; its finish is one atomic script per
shard. Heartbeats, reaping and give-backs run per shard, and a shard that is down fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.sentinel import SentinelConnectionPool

from ..backoff import MAX_BACKOFF_S, Backoff
from .base import JobRecord, Outcome, PartlyRecorded, QueueStore, StoreUnavailable, WorkerStats
from .rq import RedisStore

log = logging.getLogger(__name__)
T = TypeVar("T")


def dedicated_pool(connection: redis.Redis, socket_timeout_s: float) -> redis.ConnectionPool:
    """A pool like ``connection``'s, for a blocking call that holds its connection (a longer read timeout);
    through Sentinel, one that asks the same sentinels for the primary."""
    pool = connection.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs["socket_timeout"] = socket_timeout_s
    if isinstance(pool, SentinelConnectionPool):
        return SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class, **kwargs
        )
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


class _Waiter(threading.Thread):
    """Blocks on one shard's queue while ``wanted`` is set; hands each moved id to ``arrivals``."""

    def __init__(
        self, index: int, store: RedisStore, wanted: threading.Event, arrivals: queue.Queue, block_s: float
    ) -> None:
        super().__init__(name=f"shard-waiter-{index}", daemon=True)
        self.index, self.store, self.wanted, self.arrivals, self.block_s = index, store, wanted, arrivals, block_s
        self.connection = redis.Redis(connection_pool=dedicated_pool(store.connection, block_s + 10))
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.wanted.wait(0.5):
                continue
            try:
                moved = self.store.wait_one(self.block_s, self.connection)
            except StoreUnavailable as exc:
                log.warning("shard %d: blocking take failed (%s)", self.index, exc)
                self.stopping.wait(1.0)
                continue
            if moved is not None:
                self.arrivals.put((self.index, moved))


class ShardedStore(QueueStore):
    """``RedisStore``s, one per shard, behind the one store interface the pipeline uses."""

    def __init__(
        self,
        shards: list[RedisStore],
        block_s: float = 1.0,
        levels: list[int] | None = None,
        finish_backoff_max_s: float = 5.0,
    ) -> None:
        self.shards, self.worker_name = shards, shards[0].worker_name
        self.homes: dict[str, int] = {}  # execution -> the shard it was taken from, until it is recorded
        self.levels = levels or [0] * len(shards)  # priority of each store: 0 first (``--queue high,default``)
        self.next: dict[int, int] = {}  # per level, where the next sweep starts (fairness among equals)
        self.wanted, self.arrivals = threading.Event(), queue.Queue()
        self.waiters = [_Waiter(i, s, self.wanted, self.arrivals, block_s) for i, s in enumerate(shards)]
        self.recorded: set[str] = set()  # executions finished by a call that failed on another shard
        # per store: when a take is due again after it failed (None: its last take answered), and its back-off
        self.retry_at: list[float | None] = [None] * len(shards)
        self.backoffs = [Backoff() for _ in shards]
        # the same for finishes: when one is due again, its back-off (capped as the finisher's own: its jobs must
        # be recorded before any reaper's deferral ends), and its last error (what a skip stands for)
        self.finish_at: list[float] = [0.0] * len(shards)
        most = finish_backoff_max_s
        self.finish_backoffs = [Backoff(min(0.5, most), max_s=most) for _ in shards]
        self.finish_errors: list[StoreUnavailable | None] = [None] * len(shards)
        for waiter in self.waiters:
            waiter.start()

    @property
    def dropped(self) -> int:  # type: ignore[override]
        return sum(s.dropped for s in self.shards)

    def wrong_type_counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for shard in self.shards:
            total.update(shard.wrong_type_counts())
        return dict(total)

    def _each(self, what: str, call: Callable[[RedisStore], T]) -> list[T]:
        """``call(shard)`` on every shard; a shard that is unavailable is logged and skipped, unless all are."""
        out, errors = [], []
        for i, shard in enumerate(self.shards):
            try:
                out.append(call(shard))
            except StoreUnavailable as exc:
                errors.append(exc)
                log.warning("shard %d (%s): %s unavailable: %s", i, shard.queue, what, exc)
        if len(errors) == len(self.shards):
            raise errors[0]
        return out

    def register(self, stop: threading.Event | None = None) -> None:
        """Register on every shard (one that is down is skipped, unless all are)."""
        self._each("register", lambda s: s.register(stop))

    def announce(self, cache: dict[str, Any]) -> None:
        """Announce on every shard (one that is down announces at its next registration)."""
        self._each("announce", lambda s: s.announce(cache))

    def unregister(self) -> None:
        self._each("unregister", lambda s: s.unregister())
        for waiter in self.waiters:
            waiter.stopping.set()

    def take(self, max_jobs: int, timeout_s: float) -> list[JobRecord]:
        jobs = self._arrived(max_jobs)
        try:
            jobs += self._sweep(max_jobs - len(jobs), holding=bool(jobs))
        except StoreUnavailable:
            if jobs:  # started: they go to the hand now; the next take fails if the shards are still down
                return jobs
            raise
        if jobs or timeout_s < 0.001:
            return jobs
        if any(shard.held for shard in self.shards):  # only jobs that must stay queued: the waiters would
            time.sleep(timeout_s)  # move them at once, again and again (see ``RedisStore.take``)
            return []
        self.wanted.set()
        try:
            first = self.arrivals.get(timeout=timeout_s)
        except queue.Empty:
            return []
        finally:
            self.wanted.clear()
        self.arrivals.put(first)
        return self._arrived(max_jobs)

    def start_moved(self, ids: list[bytes], max_jobs: int) -> list[JobRecord]:
        """Start ``ids`` moved off a queue by a blocking wait on any shard (an id is started on the shard whose
        intermediate list holds it), then whatever else is queued, up to ``max_jobs``. This store's own waiters
        know their shard: see ``_arrived``."""
        jobs: list[JobRecord] = []
        for index in self._order():
            if len(jobs) >= max_jobs:
                break
            try:
                started = self._taken(index, self.shards[index].start_moved(ids, max_jobs - len(jobs)))
            except StoreUnavailable as exc:  # its ids stay in its intermediate list: its reaper returns them
                log.warning("shard %d: start failed (%s)", index, exc)
                continue
            names = {job.job_id for job in started}
            ids = [i for i in ids if i.decode("utf-8", "backslashreplace") not in names]
            jobs += started
        return jobs

    def _arrived(self, max_jobs: int) -> list[JobRecord]:
        """Start the ids the waiters moved (and whatever else their shards hold, up to ``max_jobs``)."""
        jobs: list[JobRecord] = []
        while len(jobs) < max_jobs:
            try:
                index, moved = self.arrivals.get_nowait()
            except queue.Empty:
                break
            try:
                jobs += self._taken(index, self.shards[index].start_moved([moved], max_jobs - len(jobs)))
            except StoreUnavailable as exc:  # the id stays in that shard's intermediate list: its reaper returns it
                log.warning("shard %d: start failed (%s)", index, exc)
        return jobs

    def _sweep(self, max_jobs: int, holding: bool = False) -> list[JobRecord]:
        """One non-blocking take per store: higher priorities first; among equals (shards), starting one
        further along each time (fairness). A store whose last take failed is skipped until its back-off has
        passed, and then tried only while this take holds no job yet (a silent server costs a socket timeout,
        and jobs already started elsewhere would wait that long to reach the hand, and be given back as not
        held), or once it is overdue by the longest back-off (a store of a lower priority under a steady
        trickle of higher-priority jobs is tried again all the same). With every store failing, the take fails
        (the pipeline backs off)."""
        jobs: list[JobRecord] = []
        all_down, failures = all(t is not None for t in self.retry_at), []
        for index in self._order():
            if len(jobs) >= max_jobs:
                break
            due = self.retry_at[index]
            if not all_down and due is not None:
                now = time.monotonic()
                if now < due or ((jobs or holding) and now < due + MAX_BACKOFF_S):
                    continue
            try:
                jobs += self._taken(index, self.shards[index].take(max_jobs - len(jobs), 0))
            except StoreUnavailable as exc:
                failures.append(exc)
                delay_s = self.backoffs[index].next()
                self.retry_at[index] = time.monotonic() + delay_s
                log.warning("shard %d: take failed (%s); next try in %.1f s", index, exc, delay_s)
                continue
            self.retry_at[index] = None
            self.backoffs[index].reset()
        if not jobs and len(failures) == len(self.shards):
            raise failures[0]
        return jobs

    def _order(self) -> list[int]:
        order: list[int] = []
        for level in sorted(set(self.levels)):
            members = [i for i, lv in enumerate(self.levels) if lv == level]
            start = self.next.get(level, 0) % len(members)
            self.next[level] = start + 1
            order += members[start:] + members[:start]
        return order

    def _taken(self, index: int, jobs: list[JobRecord]) -> list[JobRecord]:
        """Remember where ``jobs`` came from: each is finished on its own shard."""
        self.homes.update((job.execution, index) for job in jobs)
        return jobs

    def shard_of(self, job: JobRecord) -> int:
        """The index of the shard ``job`` was taken from (until its finish is recorded)."""
        return self.homes[job.execution]

    def finish(self, outcomes: list[Outcome]) -> list[str]:
        """One atomic finish per shard. If a shard is down, the others' are recorded and the call raises
        ``PartlyRecorded`` naming them: the caller tries again with the rest only (FINISH would skip a recorded
        one as re-queued meanwhile)."""
        todo = [o for o in outcomes if o.job.execution not in self.recorded]
        skipped, failure, tried, now = [], None, False, time.monotonic()
        homes = {self.shard_of(o.job) for o in todo}
        for index, shard in enumerate(self.shards):
            mine = [o for o in todo if self.shard_of(o.job) == index]
            if not mine:
                continue
            if now < self.finish_at[index] and homes - {index}:  # failed lately: not before its back-off, while
                failure = failure or self.finish_errors[index]  # the others can record theirs
                continue
            try:
                skipped += shard.finish(mine)
                self.recorded.update(o.job.execution for o in mine)
                self.finish_backoffs[index].reset()
            except StoreUnavailable as exc:
                failure, tried, self.finish_errors[index] = exc, True, exc
                self.finish_at[index] = time.monotonic() + self.finish_backoffs[index].next()
        done = {o.job.execution for o in outcomes if o.job.execution in self.recorded}
        if failure is not None and not done:
            raise failure
        for execution in done:
            self.recorded.discard(execution)
            self.homes.pop(execution, None)
        if failure is not None:
            raise PartlyRecorded(str(failure), done, skipped, tried) from failure
        return skipped

    def heartbeat(self, stats: WorkerStats) -> int:
        return sum(self._each("heartbeat", lambda s: s.heartbeat(stats)))

    def reap(self) -> tuple[list[str], list[str]]:
        pairs = self._each("reap", lambda s: s.reap())
        return [i for r, _ in pairs for i in r], [i for _, p in pairs for i in p]

    def give_back(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        # executions are job_id:execution_id, unique per start across shards: each shard ignores the others'
        return [i for ids in self._each("give_back", lambda s: s.give_back(in_hand, min_age_s)) for i in ids]

    def feed_lags(self) -> dict[str, int | None]:
        """Each results feed's lags, per ``queue@server:group`` (``server``: the index of its Redis URL; a server
        that does not answer is left out, the others keep their labels)."""
        per_server = max(self.levels) + 1  # the stores are built server by server, one per queue (``build_store``)
        lags: dict[str, int | None] = {}
        for i, shard in enumerate(self.shards):
            try:
                found = shard.feed_lags()
            except StoreUnavailable as exc:
                log.warning("shard %d (%s): feed lags unavailable: %s", i, shard.queue, exc)
                continue
            lags.update({f"{shard.queue}@{i // per_server}:{group}": lag for group, lag in found.items()})
        return lags
