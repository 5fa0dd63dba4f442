-- Extend a bulkhead slot's lease, only while this owner still holds it.
-- KEYS[1]  sorted set: owner token -> lease expiry, integer milliseconds on the server's clock
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds (the new expiry is now + lease)
-- Returns 1 if extended, 0 if the slot was not held or its lease had already run out
-- (an expired entry is removed: someone may count on that slot being free).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', string.format('%d', now + lease), ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
