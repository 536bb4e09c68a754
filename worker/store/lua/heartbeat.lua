-- HEARTBEAT: keep the worker alive for another TTL, and report the backlog.
-- KEYS: worker_key, worker_executions, queue
-- ARGV: ttl_s, fields...
-- fields: worker fields to set, as name, value pairs (only while the worker key exists). Returns
-- {backlog, registered}: registered 0 when the key was gone (the caller registers again).
local worker_key, worker_executions, queue = unpack(KEYS, 1, 3)
local ttl_s = unpack(ARGV, 1, 1)
ttl_s = tonumber(ttl_s)
redis.call('EXPIRE', worker_executions, ttl_s)
local registered = redis.call('EXPIRE', worker_key, ttl_s)
if registered == 1 then
  for i = 2, #ARGV, 2 do redis.call('HSET', worker_key, ARGV[i], ARGV[i + 1]) end
end
return {redis.call('LLEN', queue), registered}
