-- ANNOUNCE: what results this worker writes (producer.wire.cache: model tag, precision, decode, top-k, cache
-- TTL, and since: when it began serving that model), for producers' cache lookups; one key per queue.
-- KEYS: keys...
-- ARGV: value, since
-- A key that holds the announcement of a model some worker began serving later is kept: a re-announcement
-- (a worker registering again after an outage, one that refused a new version and still serves the old one)
-- never turns producers back to an older model's entries. Equal or newer wins (a rollback is a new start).
-- Replies how many keys it wrote, or -1 and writes nothing on a nearly full Redis (the caller retries later).
local value, since = unpack(ARGV, 1, 2)
since = tonumber(since)
if nearly_full() then return -1 end
local written = 0
for i = 1, #KEYS do
  local later = false
  if redis.call('TYPE', KEYS[i])['ok'] == 'string' then
    local ok, old = pcall(cmsgpack.unpack, redis.call('GET', KEYS[i]))
    later = ok and type(old) == 'table' and tonumber(old['since']) ~= nil and tonumber(old['since']) > since
  end
  if not later then
    redis.call('SET', KEYS[i], value)
    written = written + 1
  end
end
return written
