-- FINISH: record every job's end and announce every final result, in one atomic step.
-- KEYS: wip, worker_key, worker_executions, queue, queues, finished, failed, stream
-- ARGV: worker_name, channel, first_start, job_prefix, dependents_prefix, dependents_suffix,
--       dependencies_prefix, dependencies_suffix, execution_prefix, executions_prefix, results_prefix,
--       stream_maxlen, canceled_size, canceled_pairs, canceled_exc, cache_ttl_s, jobs...
-- ARGV per job: kind, job_id, execution_id, ttl_s, started_at, message, payload, data, retries_left,
--       cache_key, cache_value, lean_message, lean_payload
-- kind: ok | fail | retry; payload: the return value (ok) or RQ's exc_string (fail), base64; data: the
-- job's call without its image (ok) or ''; cache_key: '' when the result is not cached; lean_message and
-- lean_payload: the result with meta nil, written to RQ's result stream and the feed instead when Redis is
-- nearly full (the meta is then stored once: in the job's data), '' for a small meta. Nearly full, the cache
-- is not written either.
-- A job no longer registered as started by this execution (a reaper gave it back meanwhile), or whose
-- key is no longer a hash, is skipped: nothing of it is written. A job canceled while it ran (RQ's cancel
-- drops its started entry and sets status canceled; the job's executions still list this one until this
-- step, so a retried finish is skipped) ends canceled: an RQ failure result and an ok: false
-- "canceled" result, announced; it stays in RQ's canceled registry.
-- Keys of the wrong type: refuses (BADTYPE, nothing written) when the started registry or this worker's
-- executions set is one; every job stays started under this worker. A job whose own result stream is one,
-- a failure when the failed registry is one, a retry when the queue is one, is held: nothing of it is
-- written, it stays started under this worker, and GIVE_BACK re-queues it (once it is fixed) as a start
-- this worker does not hold. Optional writes are skipped: the finished registry's entry (the job, its
-- result and its TTL are kept), the results feed, rq:queues, this worker's hash and counters (only updated
-- while it exists), a job's executions entry (a clean-up).
-- Returns {skipped ids, canceled ids, held ids, misfits}; misfits: {key, found, wanted} triples.
local wip, worker_key, worker_executions, queue, queues, finished, failed, stream = unpack(KEYS, 1, 8)
local worker_name, channel, first_start, job_prefix, dependents_prefix, dependents_suffix,
      dependencies_prefix, dependencies_suffix, execution_prefix, executions_prefix, results_prefix,
      stream_maxlen, canceled_size, canceled_pairs, canceled_exc, cache_ttl_s = unpack(ARGV, 1, 16)
first_start, canceled_size, cache_ttl_s = tonumber(first_start), tonumber(canceled_size), tonumber(cache_ttl_s)
local bad = {}
if not check_all({{wip, 'zset'}, {worker_executions, 'set'}}, bad) then return refuse(bad) end
local queue_fits, queues_fits = check(queue, 'list', bad), check(queues, 'set', bad)
local finished_fits, failed_fits = check(finished, 'zset', bad), check(failed, 'zset', bad)
if tonumber(stream_maxlen) > 0 and not check(stream, 'stream', bad) then stream_maxlen = 0 end
local beat = redis.call('EXISTS', worker_key) == 1 and check(worker_key, 'hash', bad)
local now_ts, now_s, now_us = clock()
local ended_iso, ended_text = iso(now_s, now_us), string.format('%.6f', now_ts)
local skipped, canceled, held, writes, ok, failures = {}, {}, {}, {}, 0, 0
local full  -- nearly_full(), asked once and only when a job has something to leave out

local function lean(optional)
  if optional == '' then return false end
  if full == nil then full = nearly_full() end
  return full
end

local function expire_or_persist(key, ttl)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) elseif ttl < 0 then redis.call('PERSIST', key) end
end

-- What RQ's Job.cleanup keeps (ttl > 0), keeps for ever (ttl < 0): the job, its result stream, its
-- dependents and dependencies (EXPIRE and PERSIST work on a key of any type).
local function keep(job_id, job_key, results, ttl)
  expire_or_persist(results, ttl)
  expire_or_persist(job_key, ttl)
  local dependents, dependencies = dependents_prefix .. job_id .. dependents_suffix,
                                   dependencies_prefix .. job_id .. dependencies_suffix
  if redis.call('EXISTS', dependents, dependencies) > 0 then  -- most jobs have neither: one call, not two
    expire_or_persist(dependents, ttl)
    expire_or_persist(dependencies, ttl)
  end
end

-- This run of the job is over: its execution leaves every registry (the executions entry only from a zset).
local function unregister(job_id, execution_id, member, executions_fit)
  redis.call('DEL', execution_prefix .. member)
  redis.call('ZREM', wip, member)
  if executions_fit then redis.call('ZREM', executions_prefix .. job_id, execution_id) end
  redis.call('SREM', worker_executions, member)
end

-- Read and check: what becomes of each job. Nothing is written before the writes below.
for i = 17, #ARGV, 13 do
  local kind, job_id, execution_id, ttl_s, started_at, message, payload, data, retries_left,
        cache_key, cache_value, lean_message, lean_payload = unpack(ARGV, i, i + 12)
  local feed_message = message
  if lean(lean_message) then
    feed_message = lean_message
    if lean_payload ~= '' then payload = lean_payload end
  end
  if lean(cache_key) then cache_key = '' end
  ttl_s = tonumber(ttl_s)
  local member = job_id .. ':' .. execution_id
  local job_key, results = job_prefix .. job_id, results_prefix .. job_id
  local is_hash = redis.call('TYPE', job_key)['ok'] == 'hash'
  local executions_fit = check(executions_prefix .. job_id, 'zset', bad)
  if redis.call('ZSCORE', wip, member) == false then
    -- canceled while it ran, and not answered yet: the job's executions still list this one (the first finish
    -- removes it; a finish retried after a lost reply, or a late one after a reap, is skipped). Not this worker's
    -- executions set: it expires with the worker's key in an outage longer than its TTL; this lives 7 minutes
    local listed = executions_fit and redis.call('ZSCORE', executions_prefix .. job_id, execution_id)
    if not executions_fit then listed = redis.call('EXISTS', execution_prefix .. member) == 1 end
    if is_hash and redis.call('HGET', job_key, 'status') == 'canceled' and listed then
      local results_fit = check(results, 'stream', bad)
      canceled[#canceled + 1] = job_id
      writes[#writes + 1] = function()
        unregister(job_id, execution_id, member, executions_fit)
        if results_fit then
          add_result(results, '2', worker_name, 'exc_string', canceled_exc, execution_id, started_at, ended_text)
          local left = redis.call('TTL', job_key)  -- the cancel set it: the result goes with the job
          if left > 0 then redis.call('EXPIRE', results, left) end
        end
        announce(channel, stream, stream_maxlen, job_id, result_for(job_id, canceled_size, canceled_pairs))
      end
    else
      skipped[#skipped + 1] = job_id
    end
  elseif not is_hash then
    skipped[#skipped + 1] = job_id
    writes[#writes + 1] = function() unregister(job_id, execution_id, member, executions_fit) end
  elseif (kind == 'ok' and not check(results, 'stream', bad))
      or (kind == 'fail' and not (check(results, 'stream', bad) and failed_fits))
      or (kind == 'retry' and not queue_fits) then
    held[#held + 1] = job_id
  elseif kind == 'ok' then
    ok = ok + 1
    writes[#writes + 1] = function()
      unregister(job_id, execution_id, member, executions_fit)
      -- the image is not needed any more: keep the call without it (RQ's Job API still reads the job)
      if data ~= '' then
        redis.call('HSET', job_key, 'status', 'finished', 'ended_at', ended_iso, 'data', data)
      else
        redis.call('HSET', job_key, 'status', 'finished', 'ended_at', ended_iso)
      end
      add_result(results, '1', worker_name, 'return_value', payload, execution_id, started_at, ended_text)
      if ttl_s == 0 then
        redis.call('DEL', job_key, dependents_prefix .. job_id .. dependents_suffix,
                   dependencies_prefix .. job_id .. dependencies_suffix, results)
      else
        if finished_fits then redis.call('ZADD', finished, ttl_s > 0 and now_ts + ttl_s or '+inf', job_id) end
        keep(job_id, job_key, results, ttl_s)
      end
      announce(channel, stream, stream_maxlen, job_id, message, feed_message)
      -- the result cache (repeated photos): written with the result, in the same step (SET: any type)
      if cache_key ~= '' and cache_ttl_s > 0 then redis.call('SET', cache_key, cache_value, 'EX', cache_ttl_s) end
    end
  elseif kind == 'fail' then
    failures = failures + 1
    writes[#writes + 1] = function()
      unregister(job_id, execution_id, member, executions_fit)
      redis.call('HSET', job_key, 'status', 'failed', 'ended_at', ended_iso, 'retries_left', retries_left)
      redis.call('ZADD', failed, ttl_s < 0 and '+inf' or now_ts + ttl_s, job_id)
      add_result(results, '2', worker_name, 'exc_string', payload, execution_id, started_at, ended_text)
      keep(job_id, job_key, results, ttl_s)
      announce(channel, stream, stream_maxlen, job_id, message, feed_message)
    end
  else
    failures = failures + 1
    writes[#writes + 1] = function()
      unregister(job_id, execution_id, member, executions_fit)
      redis.call('HSET', job_key, 'status', 'queued', 'ended_at', ended_iso, 'enqueued_at', ended_iso,
                 'retries_left', retries_left)
      redis.call('RPUSH', queue, job_id)
      if queues_fits then redis.call('SADD', queues, queue) end
    end
  end
end

-- Write.
run_all(writes)
if beat and #writes > 0 then
  if ok > 0 then redis.call('HINCRBY', worker_key, 'successful_job_count', ok) end
  if failures > 0 then redis.call('HINCRBY', worker_key, 'failed_job_count', failures) end
  redis.call('HINCRBYFLOAT', worker_key, 'total_working_time', math.max(0, now_ts - first_start))
  redis.call('HSET', worker_key, 'state', 'idle')
end
return {skipped, canceled, held, bad}
