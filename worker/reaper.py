"""Heartbeats, and the reaper that gives a dead worker's jobs back to the queue within seconds.

RQ's own clean-up of abandoned jobs takes about ten minutes. Here every worker keeps its RQ worker
key alive from a background thread (``--worker-ttl``, refreshed every third of it), and every few
seconds one script finds started jobs whose worker key is gone (the worker died: ``kill -9``, OOM,
lost machine) and ids stranded in the intermediate list, and re-queues them at the head of the
queue. Each loss of a started job is counted in the job hash (``lost_deliveries``); a job lost
``max_deliveries`` times is not re-queued but handed back as poison, and the worker fails it.
The script runs atomically, so several workers may reap at once without re-queuing a job twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from rq.defaults import RQ_KEY_PREFIX
from rq.job import Job
from rq.utils import now, utcformat

from producer.protocol import make_result

from .rqbatch import SEEN_PREFIX, BatchWorker, Outcome, RQBatch

log = logging.getLogger(__name__)

LOST_FIELD = "lost_deliveries"

# ARGV: wip, queue, intermediate, execution prefix, executions prefix, worker prefix, job prefix,
# seen prefix, now (s), stranded_s, max deliveries. Returns {requeued ids, poison ids}.
REAP = """
local wip, queue, intermediate = ARGV[1], ARGV[2], ARGV[3]
local eprefix, esprefix, wprefix, jprefix, seen = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local now_s, stranded_s, max_lost = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local requeued, poison = {}, {}
local function give_back(job_id, count)
  local job_key = jprefix .. job_id
  if redis.call('EXISTS', job_key) == 0 then return end
  local lost = count and redis.call('HINCRBY', job_key, 'lost_deliveries', 1) or 0
  if lost >= max_lost then
    poison[#poison + 1] = job_id
  else
    redis.call('HSET', job_key, 'status', 'queued')
    redis.call('LPUSH', queue, job_id)
    requeued[#requeued + 1] = job_id
  end
end
for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
  local job_id, eid = string.match(member, '^(.*):([^:]+)$')
  if job_id then
    local ekey = eprefix .. member
    local wname = redis.call('HGET', ekey, 'worker_name')
    if not wname or redis.call('EXISTS', wprefix .. wname) == 0 then
      redis.call('ZREM', wip, member)
      redis.call('DEL', ekey)
      redis.call('ZREM', esprefix .. job_id, eid)
      if wname then redis.call('SREM', wprefix .. wname .. ':executions', member) end
      give_back(job_id, true)
    end
  end
end
for _, job_id in ipairs(redis.call('LRANGE', intermediate, 0, -1)) do
  local first = tonumber(redis.call('GET', seen .. job_id))
  if not first then
    redis.call('SET', seen .. job_id, now_s, 'EX', math.max(60, math.ceil(stranded_s * 4)))
  elseif now_s - first >= stranded_s then
    redis.call('DEL', seen .. job_id)
    -- never started, so it cannot have crashed anything: not counted as a lost delivery
    if redis.call('LREM', intermediate, 1, job_id) == 1 then give_back(job_id, false) end
  end
end
return {requeued, poison}
"""


class Reaper:
    """Re-queues jobs of dead workers; fails jobs lost too often (poison) through ``batches``."""

    def __init__(self, batches: RQBatch, max_deliveries: int = 3, stranded_s: float = 5.0) -> None:
        self.batches = batches
        self.connection: redis.Redis = batches.connection
        self.max_deliveries = max_deliveries
        self.stranded_s = stranded_s
        self.script = self.connection.register_script(REAP)

    def reap(self) -> tuple[list[str], list[str]]:
        """One pass: ``(requeued ids, poison ids)``; poison jobs are failed before returning."""
        queue = self.batches.queue
        args = [queue.started_job_registry.key, queue.key, queue.intermediate_queue_key,
                f"{RQ_KEY_PREFIX}:execution:", f"{RQ_KEY_PREFIX}:executions:", f"{RQ_KEY_PREFIX}:worker:",
                Job.redis_job_namespace_prefix, SEEN_PREFIX, repr(time.time()),
                self.stranded_s, self.max_deliveries]  # fmt: skip
        requeued, poison = ([i.decode() for i in ids] for ids in self.script(args=args))
        if requeued:
            log.warning("re-queued %d job(s) of dead workers: %s", len(requeued), ", ".join(requeued))
        if poison:
            self._fail_poison(poison)
        return requeued, poison

    def reap_own(self, in_hand: set[str], min_age_s: float = 10.0) -> list[str]:
        """Give back jobs started under this worker's name that it does not hold (a start whose reply
        was lost when the connection dropped); not counted as lost deliveries."""
        worker = self.batches.worker
        members = [m.decode() for m in self.connection.smembers(f"{worker.key}:executions")]
        orphans = [m for m in members if m not in in_hand]
        if not orphans:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for member in orphans:
                pipe.hget(f"{RQ_KEY_PREFIX}:execution:{member}", "created_at")
            created = pipe.execute()
        old = [m for m, c in zip(orphans, created) if c is None or time.time() - float(c) >= min_age_s]
        given = []
        for member in old:
            if member in in_hand:  # taken up meanwhile
                continue
            job_id = member.rsplit(":", 1)[0]
            if self.connection.zrem(self.batches.queue.started_job_registry.key, member):
                with self.connection.pipeline() as pipe:
                    pipe.delete(f"{RQ_KEY_PREFIX}:execution:{member}")
                    pipe.srem(f"{worker.key}:executions", member)
                    pipe.hset(Job.key_for(job_id), "status", "queued")
                    pipe.lpush(self.batches.queue.key, job_id)
                    pipe.execute()
                given.append(job_id)
        if given:
            log.warning("re-queued %d job(s) this worker started but never received: %s", len(given), ", ".join(given))
        return given

    def _fail_poison(self, ids: list[str]) -> None:
        taken = self.batches.start(ids)
        outcomes = []
        for item in taken:
            error = {"type": "poison", "message": f"the job was lost with its worker {self.max_deliveries} times "
                     "(it may crash the worker); not retried"}  # fmt: skip
            log.error("job %s failed as poison after %d lost deliveries", item.job_id, self.max_deliveries)
            result = make_result(item.job_id, model="", worker=self.batches.worker.name, timings_ms={},
                                 meta={}, error=error)  # fmt: skip
            outcomes.append(Outcome(item, result, retry=False))
        if outcomes:
            self.batches.finish(outcomes, started_at=now())


class Heartbeat(threading.Thread):
    """Keeps the worker key alive every ``ttl_s / 3`` on its own connection, and reaps every ``reap_s``."""

    def __init__(self, worker: BatchWorker, connection: redis.Redis, reaper: Reaper | None, ttl_s: int,
                 reap_s: float = 5.0) -> None:  # fmt: skip
        super().__init__(name="heartbeat", daemon=True)
        self.worker, self.connection, self.reaper = worker, connection, reaper
        self.ttl_s, self.reap_s = ttl_s, reap_s
        self.stopping = threading.Event()
        self.in_hand: set[str] | None = None  # the serving loop's executions in hand, once it runs
        self.counts: Callable[[], tuple[int, int]] | None = None  # (jobs, batches) done, once it runs
        self.samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.metrics: Any = None  # worker.metrics.Metrics: the backlog gauge is refreshed here

    def beat(self) -> None:
        """Refresh the worker key and its executions index, with batches done and images/s over
        the last minute for ``python -m producer status`` (one round trip)."""
        with self.connection.pipeline() as pipe:
            pipe.hset(self.worker.key, "last_heartbeat", utcformat(now()))
            if self.counts is not None:
                jobs, batches = self.counts()
                pipe.hset(self.worker.key, mapping={"batches": batches, "images_per_s_1m": self._rate(jobs)})
            pipe.expire(self.worker.key, self.ttl_s)
            pipe.expire(f"{self.worker.key}:executions", self.ttl_s)
            for queue in self.worker.queues:
                pipe.llen(queue.key)
            replies = pipe.execute()
        if self.metrics is not None:
            self.metrics.backlog.set(sum(replies[-len(self.worker.queues):]))

    def _rate(self, jobs: int) -> float:
        t = time.monotonic()
        self.samples.append((t, jobs))
        old = next(((ts, n) for ts, n in self.samples if t - ts <= 60), (t, jobs))
        return round((jobs - old[1]) / (t - old[0]), 2) if t > old[0] else 0.0

    def run(self) -> None:
        next_reap = time.monotonic()
        while True:
            try:
                self.beat()
                if self.reaper is not None and time.monotonic() >= next_reap:
                    self.reaper.reap()
                    if self.in_hand is not None:
                        self.reaper.reap_own(set(self.in_hand))
                    next_reap = time.monotonic() + self.reap_s
            except redis.RedisError as exc:
                log.warning("heartbeat/reaper: redis error: %s", exc)
            if self.stopping.wait(min(self.ttl_s / 3, self.reap_s)):
                return

    def stop(self) -> None:
        """Stop beating (the worker is about to unregister)."""
        self.stopping.set()
        self.join(timeout=5)
