"""Lua for workers: REAP (dead workers' jobs, stranded ids, poison), GIVE_BACK (our own lost starts),
REGISTER (RQ's register_birth) and HEARTBEAT. See ``worker.store.scripts``."""

from __future__ import annotations

from .lua_jobs import PRELUDE

# ARGV: wip, queue, intermediate, execution prefix, executions prefix, worker prefix, job prefix, seen prefix,
# stranded_s, max deliveries, failed, results prefix, exc_string (b64 of the zlib'd text), failure ttl,
# channel, feed stream, feed maxlen, the poison result's size and other pairs (see ``result_for``).
# Returns {requeued ids, poison ids}. Poison jobs are failed, published and fed here, in one atomic step.
REAP = PRELUDE + """
local wip, queue, intermediate = ARGV[1], ARGV[2], ARGV[3]
local eprefix, esprefix, wprefix, jprefix, seen = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local stranded_s, max_lost = tonumber(ARGV[9]), tonumber(ARGV[10])
local failed, rprefix, exc_b64, fttl = ARGV[11], ARGV[12], ARGV[13], tonumber(ARGV[14])
local channel, stream, maxlen, poison_n, poison_rest = ARGV[15], ARGV[16], ARGV[17], tonumber(ARGV[18]), ARGV[19]
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
    announce(channel, stream, maxlen, job_id, result_for(job_id, poison_n, poison_rest))
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
  -- only this queue's executions (a worker serving several queues shares one executions set)
  if not held[member] and redis.call('ZSCORE', wip, member) then
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

# ARGV: worker key, ttl, the number of worker sets, the sets (all workers, then each queue's), then RQ's worker
# fields as name, value pairs. What RQ's ``register_birth`` writes, as one script (it also runs on a full
# Redis, see ``Scripts``).
REGISTER = """
local nsets = tonumber(ARGV[3])
redis.call('DEL', ARGV[1])
for i = 4 + nsets, #ARGV, 2 do redis.call('HSET', ARGV[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', ARGV[1], tonumber(ARGV[2]))
for i = 4, 3 + nsets do redis.call('SADD', ARGV[i], ARGV[1]) end
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
