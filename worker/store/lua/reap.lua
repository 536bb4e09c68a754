-- REAP: give back the started jobs of dead workers (counted as lost deliveries) and ids stranded in the
-- intermediate list between a take's move and its start (not counted); a job lost max_deliveries times
-- is failed as poison, published and fed here, in the same atomic step.
-- KEYS: wip, queue, intermediate, failed, stream, finished
-- ARGV: execution_prefix, executions_prefix, worker_prefix, worker_executions_prefix,
--       worker_executions_suffix, job_prefix, seen_prefix, results_prefix, stranded_s, max_deliveries,
--       poison_exc, failure_ttl_s, channel, stream_maxlen, poison_size, poison_pairs, only_worker
-- only_worker: '' (every dead worker's jobs, and the stranded ids), or a name just taken over: only the started
-- jobs whose execution names it (they would look alive once its new owner registers; the others wait for a
-- reaper pass, which a worker defers after an outage)
-- Keys of the wrong type: refuses (BADTYPE, nothing written) when the started registry, the queue or the
-- intermediate list is one (every job stays where it is). A job due to fail as poison while the failed
-- registry or its own result stream is one stays in the started registry for a later pass; the results
-- feed is optional; clean-ups (a job's executions entry, a dead worker's executions set) skip a key of
-- another type. A full pass (not a takeover's) also drops the finished and failed registries' expired entries,
-- as RQ's workers do in their maintenance (FinishedJobRegistry/FailedJobRegistry.cleanup: expiry score past),
-- at most TRIM_CHUNKS x 5,000 a registry per pass. Returns {requeued ids, poison ids, misfits}; misfits: {key,
-- found, wanted} triples.
local wip, queue, intermediate, failed, stream, finished = unpack(KEYS, 1, 6)
local execution_prefix, executions_prefix, worker_prefix, worker_executions_prefix, worker_executions_suffix,
      job_prefix, seen_prefix, results_prefix, stranded_s, max_deliveries, poison_exc, failure_ttl_s, channel,
      stream_maxlen, poison_size, poison_pairs, only_worker = unpack(ARGV, 1, 17)
stranded_s, max_deliveries, failure_ttl_s, poison_size =
  tonumber(stranded_s), tonumber(max_deliveries), tonumber(failure_ttl_s), tonumber(poison_size)
local bad = {}
if not check_all({{wip, 'zset'}, {queue, 'list'}, {intermediate, 'list'}}, bad) then return refuse(bad) end
local failed_fits = check(failed, 'zset', bad)
if tonumber(stream_maxlen) > 0 and not check(stream, 'stream', bad) then stream_maxlen = 0 end
local now_ts, now_s, now_us = clock()
local now_iso = iso(now_s, now_us)
local requeued, poison, writes = {}, {}, {}

-- Re-queue the job at the queue's head (lost: its lost deliveries so far, this one counted), or fail it
-- as poison; a key that is no longer a hash is no job.
local function give_back(job_id, lost)
  local job_key = job_prefix .. job_id
  if lost then redis.call('HSET', job_key, 'lost_deliveries', lost) end
  if lost and lost >= max_deliveries then
    local keep_s = ttl_of(redis.call('HGET', job_key, 'failure_ttl'), failure_ttl_s)  -- the job's own
    redis.call('HSET', job_key, 'status', 'failed', 'ended_at', now_iso)
    redis.call('ZADD', failed, keep_s < 0 and '+inf' or now_ts + keep_s, job_id)
    add_result(results_prefix .. job_id, '2', '', 'exc_string', poison_exc)
    for _, key in ipairs({results_prefix .. job_id, job_key}) do
      if keep_s > 0 then redis.call('EXPIRE', key, keep_s) elseif keep_s < 0 then redis.call('PERSIST', key) end
    end
    announce(channel, stream, stream_maxlen, job_id, result_for(job_id, poison_size, poison_pairs))
    poison[#poison + 1] = job_id
  else
    redis.call('HSET', job_key, 'status', 'queued')
    redis.call('LPUSH', queue, job_id)
    requeued[#requeued + 1] = job_id
  end
end

-- A field of a hash, or nil when the key is absent or of another type.
local function field_of(key, name)
  if redis.call('TYPE', key)['ok'] ~= 'hash' then return nil end
  return redis.call('HGET', key, name) or nil
end

-- Read and check: the started jobs of dead workers. Nothing is written before the writes below.
for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
  local job_id, execution_id = string.match(member, '^(.*):([^:]+)$')
  if job_id then
    local execution_key = execution_prefix .. member
    local worker_name = field_of(execution_key, 'worker_name')
    local worker_key = worker_name and worker_prefix .. worker_name
    local ours = only_worker == '' or worker_name == only_worker
    -- dead: no worker named, its key gone (or not a worker's hash), or its death registered
    if ours and (not worker_name or redis.call('TYPE', worker_key)['ok'] ~= 'hash'
                 or redis.call('HGET', worker_key, 'death')) then
      local job_key = job_prefix .. job_id
      local is_job = redis.call('TYPE', job_key)['ok'] == 'hash'
      local lost = is_job and (tonumber(field_of(job_key, 'lost_deliveries') or '0') or 0) + 1
      local executions_fit = check(executions_prefix .. job_id, 'zset', bad)
      local worker_executions = worker_name and worker_executions_prefix .. worker_name .. worker_executions_suffix
      local worker_executions_fit = worker_name and check(worker_executions, 'set', bad)
      -- poison that cannot be recorded now: left in the started registry for a later pass
      local stays = lost and lost >= max_deliveries
                    and not (check(results_prefix .. job_id, 'stream', bad) and failed_fits)
      if not stays then
        writes[#writes + 1] = function()
          redis.call('ZREM', wip, member)
          redis.call('DEL', execution_key)
          if executions_fit then redis.call('ZREM', executions_prefix .. job_id, execution_id) end
          if worker_executions_fit then redis.call('SREM', worker_executions, member) end
          if is_job then give_back(job_id, lost) end
        end
      end
    end
  end
end
-- ... and the ids stranded in the intermediate list (not in a takeover's pass).
local stranded = only_worker == '' and redis.call('LRANGE', intermediate, 0, -1) or {}
for _, job_id in ipairs(stranded) do
  local seen = seen_prefix .. job_id
  local first = redis.call('TYPE', seen)['ok'] == 'string' and tonumber(redis.call('GET', seen)) or nil
  if not first then
    writes[#writes + 1] = function()
      redis.call('SET', seen, now_ts, 'EX', math.max(60, math.ceil(stranded_s * 4)))
    end
  elseif now_ts - first >= stranded_s then
    local is_job = redis.call('TYPE', job_prefix .. job_id)['ok'] == 'hash'
    writes[#writes + 1] = function()
      redis.call('DEL', seen)
      -- never started, so it cannot have crashed anything: not counted as a lost delivery
      if redis.call('LREM', intermediate, 1, job_id) == 1 and is_job then give_back(job_id, false) end
    end
  end
end

-- Write.
run_all(writes)

-- RQ's registry clean-up: entries whose expiry passed (their jobs' keys expired with them), in bounded chunks.
local TRIM_CHUNKS = 10
if only_worker == '' then
  for _, registry in ipairs({finished, failed}) do
    if registry ~= failed or failed_fits then
      if check(registry, 'zset', bad) then
        for _ = 1, TRIM_CHUNKS do
          local expired = redis.call('ZRANGEBYSCORE', registry, 0, now_ts, 'LIMIT', 0, 5000)
          if #expired > 0 then redis.call('ZREM', registry, unpack(expired)) end
          if #expired < 5000 then break end
        end
      end
    end
  end
end
return {requeued, poison, bad}
