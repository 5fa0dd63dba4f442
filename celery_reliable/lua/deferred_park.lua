-- Park a serialized task until it is due, on the server's clock.
-- KEYS[1]  due set (sorted set: entry -> due time in ms)
-- ARGV[1]  delay in milliseconds from now
-- ARGV[2]  entry (JSON)
-- Returns the due time in milliseconds.
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
