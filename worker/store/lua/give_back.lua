-- GIVE_BACK: re-queue the executions started under this worker's name that it does not hold (a start
-- whose reply was lost), older than min_age_s; not counted as lost deliveries.
-- KEYS: wip, worker_executions, queue
-- ARGV: execution_prefix, job_prefix, min_age_s, held...
-- held: the executions (job_id:execution_id) this worker holds. Returns the ids given back.
local wip, worker_executions, queue = unpack(KEYS, 1, 3)
local execution_prefix, job_prefix, min_age_s = unpack(ARGV, 1, 3)
min_age_s = tonumber(min_age_s)
local now_ts = clock()
local held, given = {}, {}
for i = 4, #ARGV do held[ARGV[i]] = true end
for _, member in ipairs(redis.call('SMEMBERS', worker_executions)) do
  -- only this queue's executions (a worker serving several queues shares one executions set)
  if not held[member] and redis.call('ZSCORE', wip, member) then
    local created = tonumber(redis.call('HGET', execution_prefix .. member, 'created_at') or '0') or 0
    if now_ts - created >= min_age_s then
      local job_id = string.match(member, '^(.*):[^:]+$')
      redis.call('SREM', worker_executions, member)
      redis.call('DEL', execution_prefix .. member)
      if job_id and redis.call('ZREM', wip, member) == 1 then
        if redis.call('TYPE', job_prefix .. job_id)['ok'] == 'hash' then
          redis.call('HSET', job_prefix .. job_id, 'status', 'queued')
          redis.call('LPUSH', queue, job_id)
          given[#given + 1] = job_id
        end
      end
    end
  end
end
return given
