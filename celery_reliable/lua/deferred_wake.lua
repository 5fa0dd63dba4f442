-- Make the longest-waiting task parked for a lock due now (the lock was released).
-- KEYS[1]  due set
-- KEYS[2]  waiters (sorted set: entry -> time it was parked), for one lock
-- Returns 1 if an entry was woken, 0 if none was still parked.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
while true do
  local popped = redis.call('ZPOPMIN', KEYS[2])
  if #popped == 0 then
    return 0
  end
  if redis.call('ZSCORE', KEYS[1], popped[1]) then
    redis.call('ZADD', KEYS[1], 'XX', now, popped[1])
    return 1
  end
end
