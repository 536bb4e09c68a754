"""Server-side scripts that do RQ's per-job bookkeeping for a whole batch in one command.

They write exactly the keys and fields that RQ 2.6-3.0's own calls write (``Execution.create``,
``Job.prepare_for_execution``, ``Worker.heartbeat``, ``Result.create``, ``FinishedJobRegistry.add``,
``Job.cleanup``, ``Execution.delete``), so RQ's ``Job``/``Queue``/``Worker`` APIs read the same state;
tests/test_rqscripts.py compares the two key by key. Key names come in as arguments (built by RQ's
own classes), so no key layout is spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

# ARGV: intermediate, wip, worker_key, worker_executions, worker_name, ttl, now_ts, now_iso, worker_ttl,
# seen prefix (the reaper's marks on the intermediate list), queue, then per job
# (job_key, job_id, execution_key, executions_key, execution_id). Returns, per job, its hash or false.
START = """
local intermediate, wip, wkey, wexec = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wname, ttl, now_ts, now_iso = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local out = {}
local worker_ttl, seen, queue = tonumber(ARGV[9]), ARGV[10], ARGV[11]
local suspects, bounced = 0, {}
for i = 12, #ARGV, 5 do
  local job_key, job_id, ekey, eset, eid = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  redis.call('LREM', intermediate, 1, job_id)
  redis.call('DEL', seen .. job_id)
  local hash = redis.call('HGETALL', job_key)
  local lost = tonumber(redis.call('HGET', job_key, 'lost_deliveries') or '0')
  if #hash == 0 then
    out[#out + 1] = false
  elseif lost > 0 and suspects >= 1 then
    -- a job lost with a worker before runs alone: one per batch; the others go back to the queue's head
    bounced[#bounced + 1] = job_id
    out[#out + 1] = 0
  else
    if lost > 0 then suspects = suspects + 1 end
    redis.call('HSET', ekey, 'id', eid, 'job_id', job_id, 'created_at', ARGV[7], 'last_heartbeat', ARGV[7],
               'worker_name', wname)
    redis.call('EXPIRE', ekey, ttl)
    redis.call('ZADD', eset, now_ts + ttl + 60, eid)
    redis.call('EXPIRE', eset, ttl + 60)
    redis.call('ZADD', wip, math.floor(now_ts) + ttl, job_id .. ':' .. eid)
    redis.call('SADD', wexec, job_id .. ':' .. eid)
    redis.call('HSET', job_key, 'last_heartbeat', now_iso, 'status', 'started', 'started_at', now_iso,
               'worker_name', wname)
    redis.call('PERSIST', job_key)
    out[#out + 1] = hash
  end
end
for j = #bounced, 1, -1 do redis.call('LPUSH', queue, bounced[j]) end
redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', now_iso)
redis.call('EXPIRE', wkey, worker_ttl)
redis.call('EXPIRE', wexec, worker_ttl)
return out
"""

# ARGV: wip, worker_key, worker_executions, worker_name, channel, ended_iso, ok, failed, seconds, then per
# succeeded job (job_key, deps_key, dependents_key, results_key, finished_key, ttl, score, job_id,
# execution_key, executions_key, execution_id, return_value_b64, message, started_ts, ended_ts).
FINISH = """
local wip, wkey, wexec, wname, channel, ended_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local skipped = {}
for i = 10, #ARGV, 15 do
  local job_key, deps, dependents, results, finished = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local ttl, score, job_id = tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7]
  local ekey, eset, eid = ARGV[i + 8], ARGV[i + 9], ARGV[i + 10]
  if redis.call('ZSCORE', wip, job_id .. ':' .. eid) == false then
    skipped[#skipped + 1] = job_id  -- re-queued by a reaper meanwhile: its next run writes the result
  else
  redis.call('HSET', job_key, 'status', 'finished', 'ended_at', ended_iso)
  redis.call('XADD', results, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', wname,
             'return_value', ARGV[i + 11], 'execution_id', eid, 'execution_started_at', ARGV[i + 13],
             'execution_ended_at', ARGV[i + 14])
  redis.call('EXPIRE', results, ttl)
  redis.call('ZADD', finished, score, job_id)
  redis.call('EXPIRE', job_key, ttl)
  redis.call('EXPIRE', dependents, ttl)
  redis.call('EXPIRE', deps, ttl)
  redis.call('PUBLISH', channel, ARGV[i + 12])
  redis.call('DEL', ekey)
  redis.call('ZREM', wip, job_id .. ':' .. eid)
  redis.call('ZREM', eset, eid)
  redis.call('SREM', wexec, job_id .. ':' .. eid)
  end
end
if tonumber(ARGV[7]) > 0 then redis.call('HINCRBY', wkey, 'successful_job_count', ARGV[7]) end
if tonumber(ARGV[8]) > 0 then redis.call('HINCRBY', wkey, 'failed_job_count', ARGV[8]) end
redis.call('HINCRBYFLOAT', wkey, 'total_working_time', ARGV[9])
redis.call('HSET', wkey, 'state', 'idle')
return skipped
"""


class Scripts:
    """The two scripts, loaded once; re-loaded transparently after a Redis restart (NOSCRIPT)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.sha: dict[str, str] = {}

    def load(self) -> None:
        """Load both scripts now (at start-up), so the first batch pays no extra round trips."""
        for name in ("start", "finish"):
            self._sha(name)

    def _sha(self, name: str) -> str:
        if name not in self.sha:
            self.sha[name] = self.connection.script_load(START if name == "start" else FINISH)
        return self.sha[name]

    def call(self, name: str, args: Sequence[Any]) -> Any:
        """Run script ``name`` with ``args`` (one round trip; two after a restart wiped the script cache)."""
        try:
            return self.connection.evalsha(self._sha(name), 0, *args)
        except NoScriptError:
            self.sha.pop(name, None)
            return self.connection.evalsha(self._sha(name), 0, *args)

    def queue(self, pipe: Any, name: str, args: Sequence[Any]) -> None:
        """Add script ``name`` to ``pipe`` (first in it, so ``retry_missing`` can find it)."""
        pipe.evalsha(self._sha(name), 0, *args)

    def retry_missing(self, replies: list[Any], name: str, args: Sequence[Any]) -> None:
        """If the pipeline's script failed with NOSCRIPT, load it and run it again; re-raise other errors."""
        for reply in replies:
            if isinstance(reply, NoScriptError):
                self.sha.pop(name, None)
                self.call(name, args)
            elif isinstance(reply, Exception):
                raise reply
