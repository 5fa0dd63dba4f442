-- Raise one node's fencing counter to the token a Redlock acquisition chose, while we still hold it there.
-- KEYS[1]  lock key   (string: owner token)
-- KEYS[2]  fence key  (string: last token handed out or raised to on this node; shared with RedisLock)
-- ARGV[1]  owner token
-- ARGV[2]  the acquisition's token (a decimal integer)
-- ARGV[3]  how long the fence key outlives its last use, in milliseconds
-- Returns the node's counter afterwards (>= ARGV[2]) as a string, or '0' when the lock on
-- this node is no longer ours (the counter is then left alone).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return '0'
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local want = tonumber(ARGV[2])
if want > last then
  last = want
end
redis.call('SET', KEYS[2], string.format('%.0f', last), 'PX', ARGV[3])
return string.format('%.0f', last)
