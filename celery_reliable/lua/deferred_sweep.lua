-- Put in-flight entries whose lease ran out back into the due set, due now.
-- KEYS[1]  in-flight set
-- KEYS[2]  due set
-- ARGV[1]  most entries to move
-- Returns the number of entries moved back.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, item in ipairs(items) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('ZADD', KEYS[2], now, item)
end
return #items
