-- TAKE: start up to max_jobs jobs in one atomic step: the ids a blocking move already put in the
-- intermediate list first (each only if it is still there: a reaper may have given it back meanwhile),
-- then ids popped from the queue here.
-- KEYS: queue, intermediate, wip, worker_key, worker_executions, stream
-- ARGV: worker_name, started_ttl_s, worker_ttl_s, seen_prefix, job_prefix, execution_prefix,
--       executions_prefix, max_jobs, execution_base, channel, stream_maxlen, gone_size, gone_pairs, ids...
-- Returns {now (Redis TIME, s), then per id: job_id, state, execution id or ''}. state: 1 started (the
-- caller reads the job's fields in one pipelined round trip: a script that returned every job's image
-- held Redis for tens of ms per take of big photos); false when there is no job hash (gone, or a key of
-- another type: answered job_gone here); 0 when sent back (a second suspect) or canceled; -1 when the id
-- is not UTF-8 (dropped: nothing is written for it).
local queue, intermediate, wip, worker_key, worker_executions, stream = unpack(KEYS, 1, 6)
local worker_name, started_ttl_s, worker_ttl_s, seen_prefix, job_prefix, execution_prefix,
      executions_prefix, max_jobs, execution_base, channel, stream_maxlen, gone_size, gone_pairs = unpack(ARGV, 1, 13)
started_ttl_s, worker_ttl_s, max_jobs, gone_size =
  tonumber(started_ttl_s), tonumber(worker_ttl_s), tonumber(max_jobs), tonumber(gone_size)
local now_ts, now_s, now_us = clock()
local now_iso, now_text = iso(now_s, now_us), string.format('%.6f', now_ts)
local ids = {}
for i = 14, #ARGV do
  -- a reaper may have given this id back meanwhile: then it is no longer ours to start
  if redis.call('LREM', intermediate, 1, ARGV[i]) == 1 then ids[#ids + 1] = ARGV[i] end
  redis.call('DEL', seen_prefix .. ARGV[i])
end
local more = max_jobs - (#ARGV - 13)
if more > 0 then
  local popped = redis.call('LPOP', queue, more)
  if popped then for _, id in ipairs(popped) do ids[#ids + 1] = id end end
end

-- Writes what RQ's Execution.create and Job.prepare_for_execution write; returns the execution id.
local function start(n, job_id, job_key)
  local eid = execution_base .. string.format('%04x', n)
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
  return eid
end

local out, suspects, bounced = {now_text}, 0, {}
for n, job_id in ipairs(ids) do
  local job_key = job_prefix .. job_id
  local kind = 'unaddressable'
  if addressable(job_id) then kind = redis.call('TYPE', job_key)['ok'] end
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
    announce(channel, stream, stream_maxlen, job_id, result_for(job_id, gone_size, gone_pairs))
    out[#out + 1] = false
  elseif lost > 0 and suspects >= 1 then
    -- a job lost with a worker before runs alone: one per take; the others go back to the queue's head
    bounced[#bounced + 1] = job_id
    out[#out + 1] = 0
  else
    if lost > 0 then suspects = suspects + 1 end
    local eid = start(n, job_id, job_key)
    out[#out + 1] = 1  -- started; its fields are read after the script (big images stay out of Lua)
    out[#out + 1] = eid
  end
  if type(out[#out]) ~= 'string' then out[#out + 1] = '' end
end
for j = #bounced, 1, -1 do redis.call('LPUSH', queue, bounced[j]) end
if #ids > 0 then
  redis.call('HSET', worker_key, 'state', 'busy', 'last_heartbeat', now_iso)
  redis.call('EXPIRE', worker_key, worker_ttl_s)
  redis.call('EXPIRE', worker_executions, worker_ttl_s)
end
return out
