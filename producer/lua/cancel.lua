-- CANCEL: RQ's Job.cancel in one atomic step, so no worker's take or finish can come between what it reads
-- and what it writes. What RQ 3.0's Job.cancel writes: status canceled, the id off its queue (and, for a
-- running job, its executions off the started registry), the id in the canceled registry scored now.
-- Besides: the id off the queue's intermediate list, where a worker's blocking move puts it before its
-- start (TAKE then finds it gone; a reaper never gives it back).
-- A running job's worker finds its started entry gone and the status canceled when it finishes: FINISH
-- answers it ok: false "canceled". A job that already ended (finished, failed, stopped) or was canceled
-- is left as it is. Nothing is written before every key to be written has been checked (type).
-- KEYS: job, executions, queue, intermediate, wip, canceled
-- ARGV: job_id, queue_name
-- Returns {outcome, detail}: 'canceled' (it had not started: it never will), 'canceling' (it was running:
-- it ends canceled), 'already_canceled', 'already_final' (detail: its status), 'not_found',
-- 'other_queue' (detail: the job's queue; call again with that queue's keys), 'wrong_type' (detail: the
-- key that is not the type RQ gives it; nothing written), 'unsupported' (detail: a status RQ's deferred,
-- scheduled or rate-limited jobs have, which this queue's producer never writes; nothing written).
local job, executions, queue, intermediate, wip, canceled = unpack(KEYS, 1, 6)
local job_id, queue_name = unpack(ARGV, 1, 2)

if redis.call('TYPE', job)['ok'] ~= 'hash' then return {'not_found', ''} end
local origin = redis.call('HGET', job, 'origin')
if origin and origin ~= '' and origin ~= queue_name then return {'other_queue', origin} end
local status = redis.call('HGET', job, 'status') or ''
if status == 'canceled' then return {'already_canceled', status} end
if status == 'finished' or status == 'failed' or status == 'stopped' then return {'already_final', status} end
if status ~= 'queued' and status ~= 'created' and status ~= 'started' then return {'unsupported', status} end

local expected = {{executions, 'zset'}, {queue, 'list'}, {intermediate, 'list'}, {wip, 'zset'}, {canceled, 'zset'}}
for _, pair in ipairs(expected) do
  local kind = redis.call('TYPE', pair[1])['ok']
  if kind ~= 'none' and kind ~= pair[2] then return {'wrong_type', pair[1]} end
end

-- Read everything first: a command the caller's ACL refuses then aborts the script before any write.
local members = {}  -- the job's entries in the started registry (RQ's StartedJobRegistry.remove_executions)
if status == 'started' then
  for _, execution_id in ipairs(redis.call('ZRANGE', executions, 0, -1)) do
    members[#members + 1] = job_id .. ':' .. execution_id
  end
  if #members == 0 then
    -- its executions' record expired while it ran (a long job): find its entries by their prefix
    local prefix = job_id .. ':'
    for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
      if string.sub(member, 1, #prefix) == prefix and not string.find(member, ':', #prefix + 1, true) then
        members[#members + 1] = member
      end
    end
  end
end
-- kept as long as a failed job is (its failure_ttl; RQ's default a year), not for ever with its image: TAKE
-- removed a running job's TTL, and a queued job has none
local keep_s = tonumber(redis.call('HGET', job, 'failure_ttl') or '')
-- whole seconds that EXPIRE takes (any client may write the field: a refused EXPIRE would stop the cancel)
keep_s = (keep_s == nil or keep_s ~= keep_s) and 31536000 or math.min(math.floor(keep_s), 2147483647)

-- The first writes are ones a full Redis allows (EXPIRE, LREM, ZREM), so a script without flags may go on
-- after them; EXPIRE first, so that a user without it (an ACL from before it was needed) writes nothing.
if keep_s > 0 then redis.call('EXPIRE', job, keep_s) end
redis.call('LREM', queue, 0, job_id)
redis.call('LREM', intermediate, 0, job_id)
for _, member in ipairs(members) do redis.call('ZREM', wip, member) end
redis.call('HSET', job, 'status', 'canceled')
redis.call('ZADD', canceled, redis.call('TIME')[1], job_id)  -- RQ's score: now, whole seconds
return {status == 'started' and 'canceling' or 'canceled', status}
