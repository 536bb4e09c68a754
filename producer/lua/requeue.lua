-- REQUEUE: RQ's FailedJobRegistry.requeue in one atomic step, so no other requeue (a second operator, the
-- dashboard) and no worker can come between what it reads and what it writes. What RQ 3.0 writes: the id off the
-- failed registry (nothing else if it was not there), the job's status queued, started_at and ended_at
-- cleared, enqueued_at now, origin the queue, and the id at the tail of the queue. Besides: the job's key
-- made persistent again (a failure gave it the failure TTL; a queued job must not expire before it runs, or
-- it would be answered job_gone), and the queue in rq:queues, as an enqueue leaves it. Its data (the image or
-- its URL), meta, retries_left and result history stay as they are; its lost deliveries start again from 0 (a job
-- failed as poison, requeued, gets --max-deliveries tries again, not one). Nothing is written before every key to
-- be written has been checked (type).
-- Its earlier results stay in its result stream (RQ's history): the job's `requeued_after` field records the
-- stream's last id now, so that a reader waiting for this run's result skips them (producer.results).
-- KEYS: failed, job, results, queue, queues
-- ARGV: job_id, queue_name, enqueued_at
-- Returns {outcome, detail}: 'requeued' (detail: the status it had), 'not_found' (no job hash), 'other_queue'
-- (detail: the job's queue), 'not_failed' (detail: its status; it is not, or no longer, a failed job in this
-- registry: nothing written), 'wrong_type' (detail: the key that is not the type RQ gives it; nothing written).
local failed, job, results, queue, queues = unpack(KEYS, 1, 5)
local job_id, queue_name, enqueued_at = unpack(ARGV, 1, 3)

if redis.call('TYPE', job)['ok'] ~= 'hash' then return {'not_found', ''} end
local origin = redis.call('HGET', job, 'origin')
if origin and origin ~= '' and origin ~= queue_name then return {'other_queue', origin} end
local status = redis.call('HGET', job, 'status') or ''
if status ~= 'failed' and status ~= 'stopped' then return {'not_failed', status} end

local expected = {{failed, 'zset'}, {queue, 'list'}, {queues, 'set'}, {results, 'stream'}}
for _, pair in ipairs(expected) do
  local kind = redis.call('TYPE', pair[1])['ok']
  if kind ~= 'none' and kind ~= pair[2] then return {'wrong_type', pair[1]} end
end

-- RQ's first step, and its test: a job no longer in the registry is not requeued (InvalidJobOperation)
if redis.call('ZREM', failed, job_id) == 0 then return {'not_failed', status} end
local last = redis.call('TYPE', results)['ok'] == 'stream' and redis.call('XREVRANGE', results, '+', '-', 'COUNT', 1)[1]
redis.call('HSET', job, 'status', 'queued', 'origin', queue_name, 'enqueued_at', enqueued_at,
           'started_at', '', 'ended_at', '', 'requeued_after', last and last[1] or '0-0', 'lost_deliveries', '0')
redis.call('PERSIST', job)
redis.call('RPUSH', queue, job_id)
redis.call('SADD', queues, queue)
return {'requeued', status}
