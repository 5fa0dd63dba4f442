-- Take one node's share of a Redlock and hand out this node's fencing token, in one step.
-- KEYS[1]  lock key   (string: owner token, with the lease as its expiry)
-- KEYS[2]  fence key  (string: last token handed out or raised to on this node; shared with RedisLock)
-- ARGV[1]  owner token (new for every attempt)
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  how long the fence key outlives its last use, in milliseconds
-- ARGV[4]  the client's proposed token (microseconds), or '0'; ignored beyond ARGV[5] µs past this node's clock
-- ARGV[5]  how far ahead of this node's clock a proposal may be, in microseconds
-- Returns {1, token} granted on this node | {0, pttl_ms} held by someone else
--
-- The token is max(n + 1, server time in µs, the proposal): every node that agrees with
-- the proposal returns the same token, which spares a second round (see redlock.py).
-- Numbers are formatted with '%.0f' (Lua 5.1 tostring rounds 16-digit numbers).
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local token = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if now > token then token = now end
local proposed = tonumber(ARGV[4])
if proposed > token and proposed <= now + tonumber(ARGV[5]) then token = proposed end
local s = string.format('%.0f', token)
redis.call('SET', KEYS[2], s, 'PX', ARGV[3])
return {1, s}
