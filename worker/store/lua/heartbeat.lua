-- HEARTBEAT: keep the worker alive for another TTL, and report the backlog.
-- KEYS: worker_key, worker_executions, queue
-- ARGV: ttl_s, fields...
-- fields: worker fields to set, as name, value pairs (only while the worker's hash exists). Returns
-- {backlog, registered, misfits}: registered 0 when the worker's hash was gone (the caller registers
-- again); backlog 0 when the queue is of the wrong type (reported in misfits, {key, found, wanted}).
local worker_key, worker_executions, queue = unpack(KEYS, 1, 3)
local ttl_s = unpack(ARGV, 1, 1)
ttl_s = tonumber(ttl_s)
local bad = {}
local registered = redis.call('EXISTS', worker_key) == 1 and check(worker_key, 'hash', bad)
local backlog = 0
if check(queue, 'list', bad) then backlog = redis.call('LLEN', queue) end
redis.call('EXPIRE', worker_executions, ttl_s)  -- any type: a later take or finish checks it
if registered then
  redis.call('EXPIRE', worker_key, ttl_s)
  for i = 2, #ARGV, 2 do redis.call('HSET', worker_key, ARGV[i], ARGV[i + 1]) end
end
return {backlog, registered and 1 or 0, bad}
