-- Circuit breaker outcome: record how one admitted call ended, and trip or close the breaker.
-- KEYS[1]  breaker hash (see breaker_admit.lua); the count window's counters live here too:
--          wpos (next ring slot), wn (slots filled), wf (failures), ws (slow calls), and
--          cf (consecutive failures)
-- KEYS[2]  the window: for "count", a string ring of one byte per call ("a" fast success,
--          "b" slow success, "c" fast failure, "d" slow failure); for "time", a hash of
--          "c:<bucket>", "f:<bucket>", "s:<bucket>" (calls, failures, slow calls per bucket)
-- KEYS[3]  probe leases (see breaker_admit.lua)
-- ARGV[1]  now in ms, or "" for the server's clock (TIME); an explicit now is for tests
-- ARGV[2]  generation of the permit: an outcome from an older generation is ignored
-- ARGV[3]  permit token ("" when the call was admitted in CLOSED)
-- ARGV[4]  outcome: "s" success, "f" failure, "i" ignored (releases a probe, counts nothing)
-- ARGV[5]  the call's duration in ms
-- ARGV[6]  slow-call threshold in ms (a call longer than this is slow), 0 for none
-- ARGV[7]  window type: "c" count, "t" time, "n" none (only consecutive failures count)
-- ARGV[8]  window size: calls ("c") or buckets ("t")
-- ARGV[9]  bucket length in ms ("t")
-- ARGV[10] minimum calls in the window before a rate can trip the breaker
-- ARGV[11] failure-rate threshold in parts per million, 0 for none
-- ARGV[12] slow-call-rate threshold in parts per million, 0 for none
-- ARGV[13] consecutive failures that trip the breaker, 0 for none
-- ARGV[14] recovery timeout in ms (how long OPEN lasts)
-- ARGV[15] successful probes that close the breaker
-- ARGV[16] ms every key lives after a write
-- Returns {1 recorded | 0 ignored (stale generation), state after, generation after, state
-- before a transition made here (-1: none), reason of that transition (""), calls, failures
-- and slow calls in the window after, now in ms}.
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local h = redis.call('HMGET', KEYS[1], 'st', 'gen', 'cf', 'hs', 'wpos', 'wn', 'wf', 'ws')
local st, gen = tonumber(h[1] or '0'), tonumber(h[2] or '0')
local token, outcome = ARGV[3], ARGV[4]
local held = 0
if token ~= '' then
  held = redis.call('ZREM', KEYS[3], token)
end
if tonumber(ARGV[2]) ~= gen or st == 1 then
  return {0, st, gen, -1, '', 0, 0, 0, now}
end
if outcome == 'i' then
  if held == 1 and st == 2 then
    -- an ignored probe told nothing: its slot goes to the next call
    redis.call('HINCRBY', KEYS[1], 'ho', -1)
  end
  return {0, st, gen, -1, '', 0, 0, 0, now}
end
local ttl, recovery = tonumber(ARGV[16]), tonumber(ARGV[14])
local slow_ms = tonumber(ARGV[6])
local slow = slow_ms > 0 and tonumber(ARGV[5]) > slow_ms
local failed = outcome == 'f'

local function expire()
  redis.call('PEXPIRE', KEYS[1], ttl)
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end

-- Enter OPEN or CLOSED: a new generation, a fresh window and no probes out.
local function move(to, reason, calls, failures, slows)
  gen = gen + 1
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'st', to, 'gen', gen, 'since', now, 'until', now + recovery, 'hs', 0, 'ho', 0, 'cf', 0,
    'wpos', 0, 'wn', 0, 'wf', 0, 'ws', 0)
  expire()
  return {1, to, gen, st, reason, calls, failures, slows, now}
end

if st == 2 then
  if failed then
    return move(1, 'probe_failed', 0, 0, 0)
  end
  if slow then
    return move(1, 'probe_slow', 0, 0, 0)
  end
  local hs = redis.call('HINCRBY', KEYS[1], 'hs', 1)
  if hs >= tonumber(ARGV[15]) then
    return move(0, 'probes_succeeded', 0, 0, 0)
  end
  expire()
  return {1, 2, gen, -1, '', 0, 0, 0, now}
end

local cf = 0
if failed then
  cf = tonumber(h[3] or '0') + 1
end
local calls, failures, slows = 0, 0, 0
local kind = ARGV[7]
if kind == 'c' then
  local size = tonumber(ARGV[8])
  local pos, filled = tonumber(h[5] or '0'), tonumber(h[6] or '0')
  failures, slows = tonumber(h[7] or '0'), tonumber(h[8] or '0')
  if filled >= size then
    local old = redis.call('GETRANGE', KEYS[2], pos, pos)
    if old == 'c' or old == 'd' then failures = failures - 1 end
    if old == 'b' or old == 'd' then slows = slows - 1 end
  else
    filled = filled + 1
  end
  local code = 'a'
  if failed and slow then code = 'd' elseif failed then code = 'c' elseif slow then code = 'b' end
  redis.call('SETRANGE', KEYS[2], pos, code)
  if failed then failures = failures + 1 end
  if slow then slows = slows + 1 end
  calls = filled
  redis.call('HSET', KEYS[1], 'cf', cf, 'wpos', (pos + 1) % size, 'wn', filled, 'wf', failures, 'ws', slows)
elseif kind == 't' then
  local bucket_ms = tonumber(ARGV[9])
  local current = math.floor(now / bucket_ms)
  local oldest = current - tonumber(ARGV[8]) + 1
  local stale = {}
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local what, b = string.match(fields[i], '^(%a):(%d+)$')
    if not b or tonumber(b) < oldest then
      stale[#stale + 1] = fields[i]
    elseif what == 'c' then
      calls = calls + tonumber(fields[i + 1])
    elseif what == 'f' then
      failures = failures + tonumber(fields[i + 1])
    else
      slows = slows + tonumber(fields[i + 1])
    end
  end
  if #stale > 0 then
    redis.call('HDEL', KEYS[2], unpack(stale))
  end
  calls = calls + 1
  redis.call('HINCRBY', KEYS[2], 'c:' .. current, 1)
  if failed then
    failures = failures + 1
    redis.call('HINCRBY', KEYS[2], 'f:' .. current, 1)
  end
  if slow then
    slows = slows + 1
    redis.call('HINCRBY', KEYS[2], 's:' .. current, 1)
  end
  redis.call('HSET', KEYS[1], 'cf', cf)
else
  redis.call('HSET', KEYS[1], 'cf', cf)
end

local consecutive = tonumber(ARGV[13])
if consecutive > 0 and cf >= consecutive then
  return move(1, 'consecutive_failures', calls, failures, slows)
end
if kind ~= 'n' and calls >= tonumber(ARGV[10]) then
  local rate, slow_rate = tonumber(ARGV[11]), tonumber(ARGV[12])
  if rate > 0 and failures * 1000000 >= rate * calls then
    return move(1, 'failure_rate', calls, failures, slows)
  end
  if slow_rate > 0 and slows * 1000000 >= slow_rate * calls then
    return move(1, 'slow_call_rate', calls, failures, slows)
  end
end
expire()
return {1, 0, gen, -1, '', calls, failures, slows, now}
