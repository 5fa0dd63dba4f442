-- Park a serialized task until it is due, and list it among the waiters of a lock.
-- KEYS[1]  due set (sorted set: entry -> due time in ms)
-- KEYS[2]  waiters of the lock (sorted set: entry -> time it was parked)
-- ARGV[1]  delay in milliseconds from now
-- ARGV[2]  entry (JSON)
-- Returns the due time in milliseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]) + 60000)
return due
