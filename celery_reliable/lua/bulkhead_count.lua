-- Count the live slots of a bulkhead (read only).
-- KEYS[1]  sorted set: owner token -> lease expiry, integer milliseconds on the server's clock
-- Returns {slots whose lease still runs, milliseconds until the earliest of them runs out
-- (0 when none), the server time in milliseconds}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = '(' .. string.format('%d', now)
local n = redis.call('ZCOUNT', KEYS[1], live, '+inf')
local first = redis.call('ZRANGEBYSCORE', KEYS[1], live, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local earliest = 0
if first[2] then
  earliest = tonumber(first[2]) - now
end
return {n, earliest, now}
