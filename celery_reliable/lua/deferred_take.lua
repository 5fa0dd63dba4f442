-- Move due entries into the in-flight set under a lease, and return them.
-- KEYS[1]  due set
-- KEYS[2]  in-flight set (sorted set: entry -> lease deadline in ms)
-- ARGV[1]  most entries to take
-- ARGV[2]  in-flight lease in milliseconds
-- Returns the entries taken (oldest due first).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local deadline = now + tonumber(ARGV[2])
for _, item in ipairs(items) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('ZADD', KEYS[2], deadline, item)
end
return items
