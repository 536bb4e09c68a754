-- The helpers every script shares, prepended to each (worker.store.scripts): Redis's clock, RQ's time
-- format, result maps completed from a template, the result feed, RQ's result stream, id checks, key
-- type checks.

-- The clock is Redis's own (TIME), so registry scores, deadlines and timestamps never depend on a
-- worker's clock. Returns seconds (float), then whole seconds and microseconds.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6, tonumber(t[1]), tonumber(t[2])
end

-- A Unix time as RQ's utcformat writes it: 2026-11-29T19:20:30.123456Z (civil-from-days, no os.date in Redis).
local function iso(s, us)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', y, m, d, math.floor(rem / 3600),
                       math.floor(rem % 3600 / 60), rem % 60, us)
end

-- A TTL read from a job's hash (any client may write it): whole seconds that EXPIRE takes, -1 for any negative (for
-- ever), at most 2^31 - 1 (producer.wire.jobs.MAX_TTL_S); default when it is no number. An EXPIRE refused halfway
-- through a script would leave it half-applied, and refused again at every try.
local function ttl_of(value, default)
  local n = tonumber(value or '')
  if n == nil or n ~= n then return default end
  n = math.floor(n)
  if n < -1 then return -1 end
  if n > 2147483647 then return 2147483647 end
  return n
end

-- A msgpack string.
local function mp_str(s)
  local n = #s
  if n < 32 then return string.char(0xa0 + n) .. s end
  if n < 256 then return string.char(0xd9, n) .. s end
  if n < 65536 then return string.char(0xda, math.floor(n / 256), n % 256) .. s end
  return string.char(0xdb, math.floor(n / 16777216), math.floor(n / 65536) % 256, math.floor(n / 256) % 256,
                     n % 256) .. s
end

-- A result map (msgpack) for job_id from a template (producer.wire.results.script_template): the map's
-- size and its other pairs, packed.
local function result_for(job_id, npairs, rest)
  local head = npairs < 16 and string.char(0x80 + npairs) or string.char(0xde, math.floor(npairs / 256), npairs % 256)
  return head .. mp_str('job_id') .. mp_str(job_id) .. rest
end

-- Every final result goes to the channel (best-effort) and the durable feed (a capped stream; 0: no feed);
-- the feed's copy may be a lean one (see nearly_full).
local function announce(channel, stream, maxlen, job_id, message, feed_message)
  redis.call('PUBLISH', channel, message)
  if tonumber(maxlen) > 0 then
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'job_id', job_id, 'result', feed_message or message)
  end
end

-- True when Redis holds 90% of its maxmemory or more (never without a maxmemory). Scripts run on a full
-- Redis (allow-oom) so that workers drain it; there they write nothing optional (the result cache) and a
-- result's meta once (in the job's data, not again in RQ's result stream and the feed): RELIABILITY.md.
local function nearly_full()
  local info = redis.call('INFO', 'memory')
  local limit = tonumber(string.match(info, '\nmaxmemory:(%d+)') or '0')
  return limit > 0 and tonumber(string.match(info, '\nused_memory:(%d+)') or '0') >= 0.9 * limit
end

-- One entry of a job's RQ result stream, as RQ's Result.create writes it: kind '1' (successful, value
-- field return_value) or '2' (failed, exc_string); with the execution's id and times when it ran.
local function add_result(key, kind, worker_name, field, value, execution_id, started_at, ended_at)
  if execution_id then
    redis.call('XADD', key, 'MAXLEN', '~', '10', '*', 'type', kind, 'worker_name', worker_name, field, value,
               'execution_id', execution_id, 'execution_started_at', started_at, 'execution_ended_at', ended_at)
  else
    redis.call('XADD', key, 'MAXLEN', '~', '10', '*', 'type', kind, 'worker_name', worker_name, field, value)
  end
end

-- False for an id that is not UTF-8: no client could name it (such ids are dropped, never started).
local function addressable(s)
  local i, n = 1, #s
  while i <= n do
    local c, len, lo, hi = s:byte(i), 0, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    for j = i + 1, i + len - 1 do
      local b = s:byte(j)
      if not b or b < (j == i + 1 and lo or 0x80) or b > (j == i + 1 and hi or 0xBF) then return false end
    end
    i = i + len
  end
  return true
end

-- Keys of the wrong type. Redis keeps what a script wrote before a command failed, so a WRONGTYPE error
-- halfway through a script would half-apply it (a take that popped ids and could not start them lost
-- them). So every script reads and checks first, then writes: each key it will write is absent or of the
-- type it writes there, or the script does not write it. check() appends a misfit to bad as a
-- {key, found, wanted} triple (the caller reports each one: worker.store.misfits).
local function check(key, want, bad)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == want then return true end
  bad[#bad + 1] = {key, found, want}
  return false
end

-- check() for every {key, type} pair (each one, so that every misfit is reported); true when all fit.
local function check_all(pairs, bad)
  local before = #bad
  for _, pair in ipairs(pairs) do check(pair[1], pair[2], bad) end
  return #bad == before
end

-- The reply of a script that cannot do its work without a key that is of the wrong type: nothing has
-- been written. worker.store.scripts turns it into WrongTypeKeys.
local function refuse(bad)
  return redis.error_reply('BADTYPE ' .. cjson.encode(bad))
end

-- Run the writes a script planned while it read and checked.
local function run_all(writes)
  for _, write in ipairs(writes) do write() end
end
