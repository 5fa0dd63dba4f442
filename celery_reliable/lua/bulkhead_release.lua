-- Give a bulkhead slot back, only if this owner holds it, and keep the average hold.
-- KEYS[1]  sorted set: owner token -> lease expiry, integer milliseconds on the server's clock
-- KEYS[2]  the average length of a hold in milliseconds
-- ARGV[1]  owner token
-- ARGV[2]  server time in milliseconds the slot was acquired at (0: not known, no average kept)
-- Returns 1 released while its lease ran, 2 removed after its lease had run out (the
-- holder ran unprotected for a while), 0 not held (expired and dropped, or another owner's).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
local acquired = tonumber(ARGV[2])
if acquired > 0 and now >= acquired then
  -- An exponentially weighted average: recent holds count most.
  local old = tonumber(redis.call('GET', KEYS[2]) or '0')
  local avg = now - acquired
  if old > 0 then
    avg = math.floor(old * 0.8 + avg * 0.2)
  end
  redis.call('SET', KEYS[2], string.format('%d', avg), 'PX', 86400000)
end
if tonumber(score) > now then
  return 1
end
return 2
