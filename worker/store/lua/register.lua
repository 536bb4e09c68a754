-- REGISTER: what RQ's register_birth writes, as one script (it also runs on a full Redis: see
-- worker.store.scripts).
-- KEYS: worker_key, sets...
-- ARGV: ttl_s, fields...
-- sets: every worker set the worker joins (all workers, then each queue's); fields: RQ's worker fields
-- as name, value pairs. Refuses (BADTYPE, nothing written) when a set is of the wrong type.
local worker_key = unpack(KEYS, 1, 1)
local ttl_s = unpack(ARGV, 1, 1)
local bad, sets = {}, {}
for i = 2, #KEYS do sets[#sets + 1] = {KEYS[i], 'set'} end
if not check_all(sets, bad) then return refuse(bad) end
redis.call('DEL', worker_key)
for i = 2, #ARGV, 2 do redis.call('HSET', worker_key, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', worker_key, tonumber(ttl_s))
for i = 2, #KEYS do redis.call('SADD', KEYS[i], worker_key) end
return 1
