-- GIVE_BACK: re-queue the executions started under this worker's name that it does not hold (a start
-- whose reply was lost, a finish lost in a failover, or a finish that held a job because a key it needed was
-- of the wrong type), older than min_age_s; not counted as lost deliveries.
-- KEYS: wip, worker_executions, queue
-- ARGV: execution_prefix, job_prefix, min_age_s, worker_name, full, held...
-- held: the executions (job_id:execution_id) this worker holds. full = 1: also look through the started
-- registry for executions that name this worker (after this worker's key and executions set expired in an
-- outage longer than its TTL, the set no longer lists the starts whose finish the outage lost). Refuses
-- (BADTYPE, nothing written) when a key is of the wrong type: the executions stay started. Returns {ids given
-- back, misfits}.
local wip, worker_executions, queue = unpack(KEYS, 1, 3)
local execution_prefix, job_prefix, min_age_s, worker_name, full = unpack(ARGV, 1, 5)
min_age_s = tonumber(min_age_s)
local bad = {}
if not check_all({{wip, 'zset'}, {worker_executions, 'set'}, {queue, 'list'}}, bad) then return refuse(bad) end
local now_ts = clock()
local held, given, writes = {}, {}, {}
for i = 6, #ARGV do held[ARGV[i]] = true end

-- This worker's executions: its set's, and with full the started registry's that name it.
local mine, listed = redis.call('SMEMBERS', worker_executions), {}
for _, member in ipairs(mine) do listed[member] = true end
if full == '1' then
  for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
    local execution_key = execution_prefix .. member
    if not listed[member] and redis.call('TYPE', execution_key)['ok'] == 'hash'
        and redis.call('HGET', execution_key, 'worker_name') == worker_name then
      mine[#mine + 1] = member
    end
  end
end

-- Read and check. Nothing is written before the writes below.
for _, member in ipairs(mine) do
  -- only this queue's executions (a worker serving several queues shares one executions set)
  if not held[member] and redis.call('ZSCORE', wip, member) then
    local execution_key = execution_prefix .. member
    local created = 0
    if redis.call('TYPE', execution_key)['ok'] == 'hash' then
      created = tonumber(redis.call('HGET', execution_key, 'created_at') or '0') or 0
    end
    if now_ts - created >= min_age_s then
      local job_id = string.match(member, '^(.*):[^:]+$')
      local is_job = job_id and redis.call('TYPE', job_prefix .. job_id)['ok'] == 'hash'
      writes[#writes + 1] = function()
        redis.call('SREM', worker_executions, member)
        redis.call('DEL', execution_key)
        if redis.call('ZREM', wip, member) == 1 and is_job then
          redis.call('HSET', job_prefix .. job_id, 'status', 'queued')
          redis.call('LPUSH', queue, job_id)
          given[#given + 1] = job_id
        end
      end
    end
  end
end

-- Write.
run_all(writes)
return {given, bad}
