-- REAP: give back the started jobs of dead workers (counted as lost deliveries) and ids stranded in the
-- intermediate list between a take's move and its start (not counted); a job lost max_deliveries times
-- is failed as poison, published and fed here, in the same atomic step.
-- KEYS: wip, queue, intermediate, failed, stream
-- ARGV: execution_prefix, executions_prefix, worker_prefix, worker_executions_prefix,
--       worker_executions_suffix, job_prefix, seen_prefix, results_prefix, stranded_s, max_deliveries,
--       poison_exc, failure_ttl_s, channel, stream_maxlen, poison_size, poison_pairs
-- Returns {requeued ids, poison ids}.
local wip, queue, intermediate, failed, stream = unpack(KEYS, 1, 5)
local execution_prefix, executions_prefix, worker_prefix, worker_executions_prefix, worker_executions_suffix,
      job_prefix, seen_prefix, results_prefix, stranded_s, max_deliveries, poison_exc, failure_ttl_s, channel,
      stream_maxlen, poison_size, poison_pairs = unpack(ARGV, 1, 16)
stranded_s, max_deliveries, failure_ttl_s, poison_size =
  tonumber(stranded_s), tonumber(max_deliveries), tonumber(failure_ttl_s), tonumber(poison_size)
local now_ts, now_s, now_us = clock()
local now_iso = iso(now_s, now_us)
local requeued, poison = {}, {}

local function give_back(job_id, count)
  local job_key = job_prefix .. job_id
  if redis.call('TYPE', job_key)['ok'] ~= 'hash' then return end
  local lost = 0
  if count then
    lost = tonumber(redis.call('HGET', job_key, 'lost_deliveries') or '0') or 0
    lost = lost + 1
    redis.call('HSET', job_key, 'lost_deliveries', lost)
  end
  if lost >= max_deliveries then
    redis.call('HSET', job_key, 'status', 'failed', 'ended_at', now_iso)
    redis.call('ZADD', failed, now_ts + failure_ttl_s, job_id)
    add_result(results_prefix .. job_id, '2', '', 'exc_string', poison_exc)
    redis.call('EXPIRE', results_prefix .. job_id, failure_ttl_s)
    redis.call('EXPIRE', job_key, failure_ttl_s)
    announce(channel, stream, stream_maxlen, job_id, result_for(job_id, poison_size, poison_pairs))
    poison[#poison + 1] = job_id
  else
    redis.call('HSET', job_key, 'status', 'queued')
    redis.call('LPUSH', queue, job_id)
    requeued[#requeued + 1] = job_id
  end
end

for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
  local job_id, execution_id = string.match(member, '^(.*):([^:]+)$')
  if job_id then
    local execution_key = execution_prefix .. member
    local worker_name = redis.call('HGET', execution_key, 'worker_name')
    if not worker_name or redis.call('HGET', worker_prefix .. worker_name, 'death')
       or redis.call('EXISTS', worker_prefix .. worker_name) == 0 then
      redis.call('ZREM', wip, member)
      redis.call('DEL', execution_key)
      redis.call('ZREM', executions_prefix .. job_id, execution_id)
      if worker_name then
        redis.call('SREM', worker_executions_prefix .. worker_name .. worker_executions_suffix, member)
      end
      give_back(job_id, true)
    end
  end
end
for _, job_id in ipairs(redis.call('LRANGE', intermediate, 0, -1)) do
  local first = tonumber(redis.call('GET', seen_prefix .. job_id))
  if not first then
    redis.call('SET', seen_prefix .. job_id, now_ts, 'EX', math.max(60, math.ceil(stranded_s * 4)))
  elseif now_ts - first >= stranded_s then
    redis.call('DEL', seen_prefix .. job_id)
    -- never started, so it cannot have crashed anything: not counted as a lost delivery
    if redis.call('LREM', intermediate, 1, job_id) == 1 then give_back(job_id, false) end
  end
end
return {requeued, poison}
