"""The Lua scripts of the Redis store: take+start, finish, reap and give back, each one atomic step.

They write exactly the keys and fields that RQ 2.6-3.0's own calls write (``Execution.create``,
``Job.prepare_for_execution``, ``Result.create``, ``FailedJobRegistry.add``, ``Job.retry``,
``Job.cleanup``, ``Execution.delete``), so RQ's ``Job``/``Queue``/``Worker`` APIs read the same
state; tests/contract/test_rq_writes.py compares them key by key. Key prefixes come in as
arguments from ``producer.rqkeys``. Scripts never fail halfway on a job: every job is checked
before anything about it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

# Shared by every script: the clock is Redis's own (``TIME``), so registry scores, deadlines and
# timestamps never depend on a worker's clock; ``iso`` formats it as RQ's ``utcformat`` does.
# ``addressable`` is false for an id that is not UTF-8 (no client could name it: dropped, never started).
PRELUDE = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6, tonumber(t[1]), tonumber(t[2])
end
local function iso(s, us)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', y, m, d, math.floor(rem / 3600),
                       math.floor(rem % 3600 / 60), rem % 60, us)
end
local function addressable(s)
  local i, n = 1, #s
  while i <= n do
    local c, len, lo, hi = s:byte(i), 0, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    for j = i + 1, i + len - 1 do
      local b = s:byte(j)
      if not b or b < (j == i + 1 and lo or 0x80) or b > (j == i + 1 and hi or 0xBF) then return false end
    end
    i = i + len
  end
  return true
end
"""

# ARGV: queue, intermediate, wip, worker_key, worker_executions, worker_name, ttl, worker_ttl, seen prefix,
# job prefix, execution prefix, executions prefix, max_jobs, execution id base, then the ids already moved
# into the intermediate list by a blocking move. Up to max_jobs in all: the given ids first, then ids
# popped from the queue here. Returns {now (Redis TIME, s), then job_id, hash | false | 0 | -1, eid, ...}:
# false when there is no job hash (gone, or a key of another type), 0 when sent back (a second suspect)
# or no longer ours, -1 when the id is not UTF-8 (dropped: nothing is written for it).
TAKE = PRELUDE + """
local queue, intermediate, wip, wkey, wexec = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local wname, ttl, worker_ttl = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local seen, jprefix, eprefix, esprefix = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local max_jobs, ebase = tonumber(ARGV[13]), ARGV[14]
local now_ts, now_s, now_us = clock()
local now_iso, now_text = iso(now_s, now_us), string.format('%.6f', now_ts)
local ids = {}
for i = 15, #ARGV do
  -- a reaper may have given this id back meanwhile: then it is no longer ours to start
  if redis.call('LREM', intermediate, 1, ARGV[i]) == 1 then ids[#ids + 1] = ARGV[i] end
  redis.call('DEL', seen .. ARGV[i])
end
local more = max_jobs - (#ARGV - 14)
if more > 0 then
  local popped = redis.call('LPOP', queue, more)
  if popped then for _, id in ipairs(popped) do ids[#ids + 1] = id end end
end
local out, suspects, bounced = {now_text}, 0, {}
for n, job_id in ipairs(ids) do
  local job_key = jprefix .. job_id
  local eid = ebase .. string.format('%04x', n)
  local kind = 'none'
  if addressable(job_id) then kind = redis.call('TYPE', job_key)['ok'] else kind = 'unaddressable' end
  local lost = 0
  if kind == 'hash' then lost = tonumber(redis.call('HGET', job_key, 'lost_deliveries') or '0') or 0 end
  out[#out + 1] = job_id
  if kind == 'unaddressable' then
    out[#out + 1] = -1
  elseif kind ~= 'hash' then
    out[#out + 1] = false
  elseif lost > 0 and suspects >= 1 then
    -- a job lost with a worker before runs alone: one per take; the others go back to the queue's head
    bounced[#bounced + 1] = job_id
    out[#out + 1] = 0
  else
    if lost > 0 then suspects = suspects + 1 end
    local member = job_id .. ':' .. eid
    local ekey = eprefix .. member
    redis.call('HSET', ekey, 'id', eid, 'job_id', job_id, 'created_at', now_text, 'last_heartbeat', now_text,
               'worker_name', wname)
    redis.call('EXPIRE', ekey, ttl)
    redis.call('ZADD', esprefix .. job_id, now_ts + ttl + 60, eid)
    redis.call('EXPIRE', esprefix .. job_id, ttl + 60)
    redis.call('ZADD', wip, now_s + ttl, member)
    redis.call('SADD', wexec, member)
    redis.call('HSET', job_key, 'last_heartbeat', now_iso, 'status', 'started', 'started_at', now_iso,
               'worker_name', wname)
    redis.call('PERSIST', job_key)
    out[#out + 1] = redis.call('HGETALL', job_key)
    out[#out + 1] = eid
  end
  if type(out[#out]) ~= 'string' then out[#out + 1] = '' end
end
for j = #bounced, 1, -1 do redis.call('LPUSH', queue, bounced[j]) end
if #ids > 0 then
  redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', now_iso)
  redis.call('EXPIRE', wkey, worker_ttl)
  redis.call('EXPIRE', wexec, worker_ttl)
end
return out
"""

# ARGV: wip, worker_key, worker_executions, worker_name, channel, first start (s), queue, queues,
# job prefix, execution prefix, executions prefix, results prefix, finished, failed, then per job 9 values:
# (kind, job_id, execution_id, ttl, message, return_value_b64 | exc_b64, data without the image (ok) or '',
# started_ts, retries_left). kind: ok | fail | retry. A job no longer registered as started by this
# execution (a reaper gave it back meanwhile), or whose key is no longer a hash, is skipped: nothing of
# it is written. Returns the skipped ids.
FINISH = PRELUDE + """
local wip, wkey, wexec, wname, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local first_start, queue, queues = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local jprefix, eprefix, esprefix, rprefix = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local finished, failed = ARGV[13], ARGV[14]
local now_ts, now_s, now_us = clock()
local ended_iso, ended_text = iso(now_s, now_us), string.format('%.6f', now_ts)
local skipped, ok, bad = {}, 0, 0
local function expire_or_persist(key, ttl)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) elseif ttl < 0 then redis.call('PERSIST', key) end
end
for i = 15, #ARGV, 9 do
  local kind, job_id, eid, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local member = job_id .. ':' .. eid
  local job_key, results = jprefix .. job_id, rprefix .. job_id
  if redis.call('ZSCORE', wip, member) == false then
    skipped[#skipped + 1] = job_id
  else
    redis.call('DEL', eprefix .. member)
    redis.call('ZREM', wip, member)
    redis.call('ZREM', esprefix .. job_id, eid)
    redis.call('SREM', wexec, member)
    if redis.call('TYPE', job_key)['ok'] ~= 'hash' then
      skipped[#skipped + 1] = job_id
    elseif kind == 'ok' then
      ok = ok + 1
      redis.call('HSET', job_key, 'status', 'finished', 'ended_at', ended_iso)
      -- the image is not needed any more: keep the call without it (RQ's Job API still reads the job)
      if ARGV[i + 6] ~= '' then redis.call('HSET', job_key, 'data', ARGV[i + 6]) end
      redis.call('XADD', results, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', wname,
                 'return_value', ARGV[i + 5], 'execution_id', eid, 'execution_started_at', ARGV[i + 7],
                 'execution_ended_at', ended_text)
      if ttl == 0 then
        redis.call('DEL', job_key, jprefix .. job_id .. ':dependents', jprefix .. ':' .. job_id .. ':dependencies',
                   results)
      else
        expire_or_persist(results, ttl)
        redis.call('ZADD', finished, ttl > 0 and now_ts + ttl or '+inf', job_id)
        expire_or_persist(job_key, ttl)
        expire_or_persist(jprefix .. job_id .. ':dependents', ttl)
        expire_or_persist(jprefix .. ':' .. job_id .. ':dependencies', ttl)
      end
      redis.call('PUBLISH', channel, ARGV[i + 4])
    elseif kind == 'fail' then
      bad = bad + 1
      redis.call('HSET', job_key, 'status', 'failed', 'ended_at', ended_iso, 'retries_left', ARGV[i + 8])
      redis.call('ZADD', failed, ttl < 0 and '+inf' or now_ts + ttl, job_id)
      redis.call('XADD', results, 'MAXLEN', '~', '10', '*', 'type', '2', 'worker_name', wname,
                 'exc_string', ARGV[i + 5], 'execution_id', eid, 'execution_started_at', ARGV[i + 7],
                 'execution_ended_at', ended_text)
      expire_or_persist(results, ttl)
      expire_or_persist(job_key, ttl)
      expire_or_persist(jprefix .. job_id .. ':dependents', ttl)
      expire_or_persist(jprefix .. ':' .. job_id .. ':dependencies', ttl)
      redis.call('PUBLISH', channel, ARGV[i + 4])
    else
      bad = bad + 1
      redis.call('HSET', job_key, 'status', 'queued', 'ended_at', ended_iso, 'enqueued_at', ended_iso,
                 'retries_left', ARGV[i + 8])
      redis.call('RPUSH', queue, job_id)
      redis.call('SADD', queues, queue)
    end
  end
end
if ok > 0 then redis.call('HINCRBY', wkey, 'successful_job_count', ok) end
if bad > 0 then redis.call('HINCRBY', wkey, 'failed_job_count', bad) end
redis.call('HINCRBYFLOAT', wkey, 'total_working_time', math.max(0, now_ts - first_start))
redis.call('HSET', wkey, 'state', 'idle')
return skipped
"""

# ARGV: wip, queue, intermediate, execution prefix, executions prefix, worker prefix, job prefix, seen prefix,
# stranded_s, max deliveries, failed, results prefix, exc_string (b64 of the zlib'd text), failure ttl.
# Returns {requeued ids, poison ids}. Poison jobs are failed here, in the same atomic step (the caller
# publishes their results: the channel is best-effort).
REAP = PRELUDE + """
local wip, queue, intermediate = ARGV[1], ARGV[2], ARGV[3]
local eprefix, esprefix, wprefix, jprefix, seen = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local stranded_s, max_lost = tonumber(ARGV[9]), tonumber(ARGV[10])
local failed, rprefix, exc_b64, fttl = ARGV[11], ARGV[12], ARGV[13], tonumber(ARGV[14])
local now_s, now_sec, now_us = clock()
local now_iso = iso(now_sec, now_us)
local requeued, poison = {}, {}
local function give_back(job_id, count)
  local job_key = jprefix .. job_id
  if redis.call('TYPE', job_key)['ok'] ~= 'hash' then return end
  local lost = 0
  if count then
    lost = tonumber(redis.call('HGET', job_key, 'lost_deliveries') or '0') or 0
    lost = lost + 1
    redis.call('HSET', job_key, 'lost_deliveries', lost)
  end
  if lost >= max_lost then
    redis.call('HSET', job_key, 'status', 'failed', 'ended_at', now_iso)
    redis.call('ZADD', failed, now_s + fttl, job_id)
    redis.call('XADD', rprefix .. job_id, 'MAXLEN', '~', '10', '*', 'type', '2', 'worker_name', '',
               'exc_string', exc_b64)
    redis.call('EXPIRE', rprefix .. job_id, fttl)
    redis.call('EXPIRE', job_key, fttl)
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
    if not wname or redis.call('HGET', wprefix .. wname, 'death') or redis.call('EXISTS', wprefix .. wname) == 0 then
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

# ARGV: wip, worker_executions, execution prefix, job prefix, queue, min_age_s, then the members
# this worker holds. Gives back executions started under this worker's name that it does not hold (a
# start whose reply was lost), older than min_age_s; not counted as lost deliveries. Returns their ids.
GIVE_BACK = PRELUDE + """
local wip, wexec, eprefix, jprefix, queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local min_age = tonumber(ARGV[6])
local now_s = clock()
local held, given = {}, {}
for i = 7, #ARGV do held[ARGV[i]] = true end
for _, member in ipairs(redis.call('SMEMBERS', wexec)) do
  if not held[member] then
    local created = tonumber(redis.call('HGET', eprefix .. member, 'created_at') or '0') or 0
    if now_s - created >= min_age then
      local job_id = string.match(member, '^(.*):[^:]+$')
      redis.call('SREM', wexec, member)
      redis.call('DEL', eprefix .. member)
      if job_id and redis.call('ZREM', wip, member) == 1 then
        if redis.call('TYPE', jprefix .. job_id)['ok'] == 'hash' then
          redis.call('HSET', jprefix .. job_id, 'status', 'queued')
          redis.call('LPUSH', queue, job_id)
          given[#given + 1] = job_id
        end
      end
    end
  end
end
return given
"""

# ARGV: worker key, ttl, all-workers set, queue's workers set, then RQ's worker fields as name, value pairs.
# What RQ's ``register_birth`` writes, as one script (it also runs on a full Redis, see ``Scripts``).
REGISTER = """
redis.call('DEL', ARGV[1])
for i = 5, #ARGV, 2 do redis.call('HSET', ARGV[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', ARGV[1], tonumber(ARGV[2]))
redis.call('SADD', ARGV[3], ARGV[1])
redis.call('SADD', ARGV[4], ARGV[1])
return 1
"""

# ARGV: worker key, worker executions, queue, ttl, then fields to set as name, value pairs. Keeps the worker
# alive for another TTL; returns {backlog, registered}: registered 0 when the key was gone (re-register).
HEARTBEAT = """
local wkey, wexec, ttl = ARGV[1], ARGV[2], tonumber(ARGV[4])
redis.call('EXPIRE', wexec, ttl)
local registered = redis.call('EXPIRE', wkey, ttl)
if registered == 1 then
  for i = 5, #ARGV, 2 do redis.call('HSET', wkey, ARGV[i], ARGV[i + 1]) end
end
return {redis.call('LLEN', ARGV[3]), registered}
"""

SOURCES = {"take": TAKE, "finish": FINISH, "reap": REAP, "give_back": GIVE_BACK, "register": REGISTER,
           "heartbeat": HEARTBEAT}  # fmt: skip
# Redis 7 runs scripts that declare allow-oom on a full Redis (maxmemory reached, noeviction): ours free
# at least as much as they write (a start pops the queue, a finish drops the image). Redis 6.2 knows no
# flags; there a script that has written anything may go on writing, and each of ours writes first with
# a command that a full Redis allows (LREM/LPOP, DEL, EXPIRE, ZREM, HINCRBY...), so they run there too.
ALLOW_OOM = "#!lua flags=allow-oom\n"


class Scripts:
    """The store's scripts, loaded once; re-loaded transparently after a Redis restart (NOSCRIPT)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.sha: dict[str, str] = {}
        self.flags: str | None = None  # the shebang line on Redis >= 7, '' before

    def load(self) -> None:
        """Load every script now (at start-up), so the first batch pays no extra round trips."""
        for name in SOURCES:
            self._sha(name)

    def _sha(self, name: str) -> str:
        if self.flags is None:
            version = str(self.connection.info("server").get("redis_version", "0"))
            self.flags = ALLOW_OOM if int(version.split(".")[0]) >= 7 else ""
        if name not in self.sha:
            self.sha[name] = self.connection.script_load(self.flags + SOURCES[name])
        return self.sha[name]

    def call(self, name: str, args: Sequence[Any]) -> Any:
        """Run script ``name`` with ``args`` (one round trip; two after a restart wiped the script cache)."""
        try:
            return self.connection.evalsha(self._sha(name), 0, *args)
        except NoScriptError:
            self.sha.pop(name, None)
            return self.connection.evalsha(self._sha(name), 0, *args)
