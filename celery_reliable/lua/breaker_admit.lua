-- Circuit breaker admission: may one call go ahead now? (CLOSED: yes; OPEN: no until the
-- recovery timeout has passed, then HALF_OPEN; HALF_OPEN: yes while probe slots are left.)
-- KEYS[1]  breaker hash: st (0 closed, 1 open, 2 half-open; missing = closed), gen (bumped
--          by every transition), until (ms the open state ends), since (ms of the last
--          transition), hs (successful probes), ho (probe slots taken in this HALF_OPEN:
--          a probe keeps its slot when it succeeds, and gives it back when it is ignored
--          or its lease ends), plus the window counters of breaker_record
-- KEYS[2]  the failure window (deleted when the breaker leaves CLOSED)
-- KEYS[3]  probe leases: sorted set of permit tokens scored by the ms their lease ends
-- ARGV[1]  now in ms, or "" for the server's clock (TIME); an explicit now is for tests
-- ARGV[2]  recovery timeout in ms (caps the wait told to a call denied in HALF_OPEN)
-- ARGV[3]  probe slots per HALF_OPEN (so at most this many probes reach the dependency)
-- ARGV[4]  probe lease in ms (a permit never recorded frees its slot after this)
-- ARGV[5]  this call's permit token (used only when it becomes a probe)
-- ARGV[6]  ms every key lives after a write
-- Returns {1 allowed | 0 denied, state after, generation after, ms until a call may be
-- admitted (0 when allowed), state before a transition made here (-1: none), reason of
-- that transition ("" or "recovery_timeout"), now in ms}.
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local h = redis.call('HMGET', KEYS[1], 'st', 'gen', 'until')
local st, gen = tonumber(h[1] or '0'), tonumber(h[2] or '0')
if st == 0 then
  return {1, 0, gen, 0, -1, '', now}
end
local from, reason = -1, ''
local ttl = tonumber(ARGV[6])
if st == 1 then
  local open_until = tonumber(h[3] or '0')
  if now < open_until then
    return {0, 1, gen, open_until - now, -1, '', now}
  end
  gen = gen + 1
  st, from, reason = 2, 1, 'recovery_timeout'
  redis.call('HSET', KEYS[1], 'st', 2, 'gen', gen, 'since', now, 'hs', 0, 'ho', 0)
  redis.call('DEL', KEYS[3])
end
local taken = tonumber(redis.call('HGET', KEYS[1], 'ho') or '0')
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if expired > 0 then
  taken = math.max(0, taken - expired)
  redis.call('HSET', KEYS[1], 'ho', taken)
end
if redis.call('ZSCORE', KEYS[3], ARGV[5]) then
  -- this token's probe, asked again (a call re-sent after a lost reply): the same permit
  return {1, 2, gen, 0, from, reason, now}
end
if taken >= tonumber(ARGV[3]) then
  local wait = tonumber(ARGV[2])
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[2] then
    wait = math.max(1, math.min(tonumber(first[2]) - now, wait))
  end
  return {0, 2, gen, wait, from, reason, now}
end
redis.call('HSET', KEYS[1], 'ho', taken + 1)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, 2, gen, 0, from, reason, now}
