-- TAKE: start up to max_jobs jobs in one atomic step: the ids a blocking move already put in the
-- intermediate list first (each only if it is still there: a reaper may have given it back meanwhile),
-- then ids from the queue's head.
-- KEYS: queue, intermediate, wip, worker_key, worker_executions, stream
-- ARGV: worker_name, started_ttl_s, worker_ttl_s, seen_prefix, job_prefix, execution_prefix,
--       executions_prefix, results_prefix, max_jobs, execution_base, channel, stream_maxlen, gone_size,
--       gone_pairs, ids...
-- Returns {now (Redis TIME, s), misfits, then per id: job_id, state, execution id or ''}. state: 1 started
-- (the caller reads the job's fields in one pipelined round trip: a script that returned every job's image
-- held Redis for tens of ms per take of big photos); false when there is no job hash (gone, or a key of
-- another type: answered job_gone here); 0 when sent back (a second suspect) or canceled; -1 when the id
-- is not UTF-8 (dropped: nothing is written for it); 2 when held: a key of the job's own (its executions,
-- its result stream) is of the wrong type, so it is not started and goes back to the
-- queue's tail (queued, as it was); 3 when the job has ended already (finished, failed or stopped: an id queued
-- again without RQ's requeue, which sets it queued first): dropped, never run twice. misfits: {key, found,
-- wanted} for each key of the wrong type.
-- Refuses (BADTYPE, nothing written) when the queue, the intermediate list, the started registry or this
-- worker's executions set is of the wrong type: every id stays where it is. The results feed and this
-- worker's hash are optional here (a job_gone answer skips the feed; the hash is only updated while it
-- exists: re-creating it after a Redis restart would hide that the registration is gone).
local queue, intermediate, wip, worker_key, worker_executions, stream = unpack(KEYS, 1, 6)
local worker_name, started_ttl_s, worker_ttl_s, seen_prefix, job_prefix, execution_prefix,
      executions_prefix, results_prefix, max_jobs, execution_base, channel, stream_maxlen, gone_size,
      gone_pairs = unpack(ARGV, 1, 14)
started_ttl_s, worker_ttl_s, max_jobs, gone_size =
  tonumber(started_ttl_s), tonumber(worker_ttl_s), tonumber(max_jobs), tonumber(gone_size)
local bad = {}
if not check_all({{queue, 'list'}, {intermediate, 'list'}, {wip, 'zset'}, {worker_executions, 'set'}}, bad) then
  return refuse(bad)
end
local beat = redis.call('EXISTS', worker_key) == 1 and check(worker_key, 'hash', bad)
if tonumber(stream_maxlen) > 0 and not check(stream, 'stream', bad) then stream_maxlen = 0 end
local now_ts, now_s, now_us = clock()
local now_iso, now_text = iso(now_s, now_us), string.format('%.6f', now_ts)

-- Read and check: which ids are ours, and what becomes of each. Nothing is written before the writes below.
local ids = {}
for i = 15, #ARGV do
  -- a reaper may have given this id back meanwhile: then it is no longer ours to start
  if redis.call('LPOS', intermediate, ARGV[i]) then ids[#ids + 1] = ARGV[i] end
end
local popped = {}
local more = max_jobs - (#ARGV - 14)
if more > 0 then popped = redis.call('LRANGE', queue, 0, more - 1) end
for _, id in ipairs(popped) do ids[#ids + 1] = id end

-- Writes what RQ's Execution.create and Job.prepare_for_execution write.
local function start(job_id, job_key, eid)
  local member = job_id .. ':' .. eid
  local execution_key = execution_prefix .. member
  redis.call('HSET', execution_key, 'id', eid, 'job_id', job_id, 'created_at', now_text, 'last_heartbeat', now_text,
             'worker_name', worker_name)
  redis.call('EXPIRE', execution_key, started_ttl_s)
  redis.call('ZADD', executions_prefix .. job_id, now_ts + started_ttl_s + 60, eid)
  redis.call('EXPIRE', executions_prefix .. job_id, started_ttl_s + 60)
  redis.call('ZADD', wip, now_s + started_ttl_s, member)
  redis.call('SADD', worker_executions, member)
  redis.call('HSET', job_key, 'last_heartbeat', now_iso, 'status', 'started', 'started_at', now_iso,
             'worker_name', worker_name)
  redis.call('PERSIST', job_key)
end

local out, writes, suspects, bounced = {now_text, bad}, {}, 0, {}
for n, job_id in ipairs(ids) do
  local job_key = job_prefix .. job_id
  local eid = execution_base .. string.format('%04x', n)
  local state, kind = 1, 'unaddressable'
  if addressable(job_id) then kind = redis.call('TYPE', job_key)['ok'] end
  local lost = 0
  if kind == 'hash' then
    local fields = redis.call('HMGET', job_key, 'lost_deliveries', 'status')
    lost = tonumber(fields[1] or '0') or 0
    -- canceled (RQ's cancel) after a blocking move took it off the queue: never started
    if fields[2] == 'canceled' then kind = 'canceled' end
    if fields[2] == 'finished' or fields[2] == 'failed' or fields[2] == 'stopped' then kind = 'ended' end
  end
  if kind == 'unaddressable' then
    state = -1
  elseif kind == 'canceled' then
    state = 0
  elseif kind == 'ended' then
    state = 3
  elseif kind ~= 'hash' then
    state = false
    writes[#writes + 1] = function()
      announce(channel, stream, stream_maxlen, job_id, result_for(job_id, gone_size, gone_pairs))
    end
  -- (the execution's own key is not checked: its id is new and random, and no client but a worker may write
  -- rq:execution:* keys, docs/security.md)
  elseif not check_all({{executions_prefix .. job_id, 'zset'}, {results_prefix .. job_id, 'stream'}}, bad) then
    state = 2
    writes[#writes + 1] = function() redis.call('RPUSH', queue, job_id) end
  elseif lost > 0 and suspects >= 1 then
    -- a job lost with a worker before runs alone: one per take; the others go back to the queue's head
    bounced[#bounced + 1] = job_id
    state = 0
  else
    if lost > 0 then suspects = suspects + 1 end
    writes[#writes + 1] = function() start(job_id, job_key, eid) end
  end
  out[#out + 1] = job_id
  out[#out + 1] = state
  out[#out + 1] = state == 1 and eid or ''  -- started: its fields are read after the script (big images stay out of Lua)
end

-- Write.
for i = 15, #ARGV do
  redis.call('LREM', intermediate, 1, ARGV[i])
  redis.call('DEL', seen_prefix .. ARGV[i])
end
if #popped > 0 then redis.call('LPOP', queue, #popped) end
run_all(writes)
for j = #bounced, 1, -1 do redis.call('LPUSH', queue, bounced[j]) end
if #ids > 0 then
  if beat then
    redis.call('HSET', worker_key, 'state', 'busy', 'last_heartbeat', now_iso)
    redis.call('EXPIRE', worker_key, worker_ttl_s)
  end
  redis.call('EXPIRE', worker_executions, worker_ttl_s)
end
return out
