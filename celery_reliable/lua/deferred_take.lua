-- Move due entries into the in-flight set under a lease, and return them with the wait for the next.
-- KEYS[1]  due set
-- KEYS[2]  in-flight set (sorted set: entry -> lease deadline in ms)
-- ARGV[1]  most entries to take
-- ARGV[2]  in-flight lease in milliseconds
-- Returns {entries taken (oldest due first), milliseconds until the earliest entry left in
-- the due set is due on the server's clock (0: due now), or -1 when the due set is empty}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local deadline = now + tonumber(ARGV[2])
for _, item in ipairs(items) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('ZADD', KEYS[2], deadline, item)
end
local wait = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  wait = math.max(math.floor(tonumber(first[2]) - now), 0)
end
return {items, wait}
