-- Circuit breaker control: read the whole state, or reset it to CLOSED with an empty window.
-- KEYS[1]  breaker hash (see breaker_admit.lua and breaker_record.lua)
-- KEYS[2]  the window (see breaker_record.lua)
-- KEYS[3]  probe leases (see breaker_admit.lua)
-- ARGV[1]  now in ms, or "" for the server's clock (TIME); an explicit now is for tests
-- ARGV[2]  operation: "state" (read only) or "reset"
-- ARGV[3]  window type: "c" count, "t" time, "n" none
-- ARGV[4]  window size: buckets ("t"; unused otherwise)
-- ARGV[5]  bucket length in ms ("t")
-- ARGV[6]  ms the keys live after a reset
-- Returns {state, generation, ms until OPEN ends (0 otherwise), ms of the last transition
-- (0 if none), consecutive failures, successful probes, probe permits out, calls, failures
-- and slow calls in the window, state before a reset (-1 when already closed or reading),
-- now in ms}; a reset returns the state after it.
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local h = redis.call('HMGET', KEYS[1], 'st', 'gen', 'until', 'since', 'cf', 'hs', 'wn', 'wf', 'ws')
local st, gen = tonumber(h[1] or '0'), tonumber(h[2] or '0')
if ARGV[2] == 'reset' then
  local before = -1
  if redis.call('EXISTS', KEYS[1]) == 1 then
    gen = gen + 1
    if st ~= 0 then
      before = st
    end
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    -- keep the generation, so permits handed out before the reset are recognised as stale
    redis.call('HSET', KEYS[1], 'st', 0, 'gen', gen, 'since', now)
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
  else
    redis.call('DEL', KEYS[2], KEYS[3])
  end
  return {0, gen, 0, now, 0, 0, 0, 0, 0, 0, before, now}
end
local wait = 0
if st == 1 then
  wait = math.max(0, tonumber(h[3] or '0') - now)
end
local probes = 0
if st == 2 then
  probes = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
end
local calls, failures, slows = tonumber(h[7] or '0'), tonumber(h[8] or '0'), tonumber(h[9] or '0')
if ARGV[3] == 't' then
  calls, failures, slows = 0, 0, 0
  local oldest = math.floor(now / tonumber(ARGV[5])) - tonumber(ARGV[4]) + 1
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local what, b = string.match(fields[i], '^(%a):(%d+)$')
    if b and tonumber(b) >= oldest then
      if what == 'c' then
        calls = calls + tonumber(fields[i + 1])
      elseif what == 'f' then
        failures = failures + tonumber(fields[i + 1])
      else
        slows = slows + tonumber(fields[i + 1])
      end
    end
  end
elseif ARGV[3] == 'n' then
  calls, failures, slows = 0, 0, 0
end
return {st, gen, wait, tonumber(h[4] or '0'), tonumber(h[5] or '0'), tonumber(h[6] or '0'), probes,
  calls, failures, slows, -1, now}
