"""Lua for jobs: the shared prelude (Redis's clock, result maps, the feed, id checks), TAKE (pop and
start) and FINISH (record every outcome and announce every final result). See ``worker.store.scripts``."""

from __future__ import annotations

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
local function mp_str(s)
  local n = #s
  if n < 32 then return string.char(0xa0 + n) .. s end
  if n < 256 then return string.char(0xd9, n) .. s end
  if n < 65536 then return string.char(0xda, math.floor(n / 256), n % 256) .. s end
  return string.char(0xdb, math.floor(n / 16777216), math.floor(n / 65536) % 256, math.floor(n / 256) % 256,
                     n % 256) .. s
end
-- A result map (msgpack) for job_id from a template: the map's size and its other pairs, packed.
local function result_for(job_id, npairs, rest)
  local head = npairs < 16 and string.char(0x80 + npairs) or string.char(0xde, math.floor(npairs / 256), npairs % 256)
  return head .. mp_str('job_id') .. mp_str(job_id) .. rest
end
-- Every final result goes to the channel (best-effort) and the durable feed (a capped stream).
local function announce(channel, stream, maxlen, job_id, message)
  redis.call('PUBLISH', channel, message)
  if tonumber(maxlen) > 0 then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'job_id', job_id, 'result', message)
  end
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
# job prefix, execution prefix, executions prefix, max_jobs, execution id base, channel, feed stream, feed
# maxlen, the job_gone result's size and other pairs (see ``result_for``), then the ids already moved
# into the intermediate list by a blocking move. Up to max_jobs in all: the given ids first, then ids
# popped from the queue here. Returns {now (Redis TIME, s), then job_id, 1 | false | 0 | -1, eid, ...}: 1 when
# started (the caller reads the job's fields in one pipelined round trip: a script that returned every
# job's image held Redis for tens of ms per take of big photos),
# false when there is no job hash (gone, or a key of another type: answered job_gone here), 0 when sent
# back (a second suspect)
# or no longer ours, -1 when the id is not UTF-8 (dropped: nothing is written for it).
TAKE = PRELUDE + """
local queue, intermediate, wip, wkey, wexec = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local wname, ttl, worker_ttl = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local seen, jprefix, eprefix, esprefix = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local max_jobs, ebase = tonumber(ARGV[13]), ARGV[14]
local channel, stream, maxlen, gone_n, gone_rest = ARGV[15], ARGV[16], ARGV[17], tonumber(ARGV[18]), ARGV[19]
local now_ts, now_s, now_us = clock()
local now_iso, now_text = iso(now_s, now_us), string.format('%.6f', now_ts)
local ids = {}
for i = 20, #ARGV do
  -- a reaper may have given this id back meanwhile: then it is no longer ours to start
  if redis.call('LREM', intermediate, 1, ARGV[i]) == 1 then ids[#ids + 1] = ARGV[i] end
  redis.call('DEL', seen .. ARGV[i])
end
local more = max_jobs - (#ARGV - 19)
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
  if kind == 'hash' then
    lost = tonumber(redis.call('HGET', job_key, 'lost_deliveries') or '0') or 0
    -- canceled (RQ's cancel) after a blocking move took it off the queue: never started
    if redis.call('HGET', job_key, 'status') == 'canceled' then kind = 'canceled' end
  end
  out[#out + 1] = job_id
  if kind == 'unaddressable' then
    out[#out + 1] = -1
  elseif kind == 'canceled' then
    out[#out + 1] = 0
  elseif kind ~= 'hash' then
    announce(channel, stream, maxlen, job_id, result_for(job_id, gone_n, gone_rest))
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
    out[#out + 1] = 1  -- started; its fields are read after the script (big images stay out of Lua)
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
# job prefix, execution prefix, executions prefix, results prefix, finished, failed, feed stream, feed maxlen
# (0: no feed), the canceled result's size and other pairs (``result_for``), its exc_string (b64), the
# result cache's TTL (0: off), then per job 11 values: (kind, job_id, execution_id, ttl, message,
# return_value_b64 | exc_b64, data without the image (ok) or '', started_ts, retries_left, cache key or '',
# cache value). kind: ok | fail | retry. A job no longer registered as
# started by this execution (a reaper gave it back meanwhile), or whose key is no longer a hash, is
# skipped: nothing of it is written. A job canceled while it ran (RQ's cancel drops its started entry
# and sets status canceled) ends canceled: an RQ failure result and an ok: false "canceled" result,
# announced; it stays in RQ's canceled registry. Returns {skipped ids, canceled ids}.
FINISH = PRELUDE + """
local wip, wkey, wexec, wname, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local first_start, queue, queues = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local jprefix, eprefix, esprefix, rprefix = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local finished, failed, stream, maxlen = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local cancel_n, cancel_rest, cancel_exc, cache_ttl = tonumber(ARGV[17]), ARGV[18], ARGV[19], tonumber(ARGV[20])
local now_ts, now_s, now_us = clock()
local ended_iso, ended_text = iso(now_s, now_us), string.format('%.6f', now_ts)
local skipped, canceled, ok, bad = {}, {}, 0, 0
local function expire_or_persist(key, ttl)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) elseif ttl < 0 then redis.call('PERSIST', key) end
end
for i = 21, #ARGV, 11 do
  local kind, job_id, eid, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local member = job_id .. ':' .. eid
  local job_key, results = jprefix .. job_id, rprefix .. job_id
  if redis.call('ZSCORE', wip, member) == false then
    if redis.call('TYPE', job_key)['ok'] == 'hash' and redis.call('HGET', job_key, 'status') == 'canceled' then
      redis.call('DEL', eprefix .. member)
      redis.call('ZREM', esprefix .. job_id, eid)
      redis.call('SREM', wexec, member)
      redis.call('XADD', results, 'MAXLEN', '~', '10', '*', 'type', '2', 'worker_name', wname,
                 'exc_string', cancel_exc, 'execution_id', eid, 'execution_started_at', ARGV[i + 7],
                 'execution_ended_at', ended_text)
      announce(channel, stream, maxlen, job_id, result_for(job_id, cancel_n, cancel_rest))
      canceled[#canceled + 1] = job_id
    else
      skipped[#skipped + 1] = job_id
    end
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
      announce(channel, stream, maxlen, job_id, ARGV[i + 4])
      -- the result cache (repeated photos): written with the result, in the same step
      if ARGV[i + 9] ~= '' and cache_ttl > 0 then redis.call('SET', ARGV[i + 9], ARGV[i + 10], 'EX', cache_ttl) end
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
      announce(channel, stream, maxlen, job_id, ARGV[i + 4])
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
return {skipped, canceled}
"""
