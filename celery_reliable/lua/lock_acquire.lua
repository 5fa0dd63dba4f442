-- Acquire a lock and hand out its fencing token, in one step.
-- KEYS[1]  lock key   (string: owner token, with the lease as its expiry)
-- KEYS[2]  fence key  (hash: n = last token handed out, max = highest token the database reserved)
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  "1" when tokens must stay within a range reserved in the database, else "0"
-- ARGV[4]  how long the fence key outlives its last use, in milliseconds
-- ARGV[5]  floor of a newly reserved range ("" when none): every token handed out is above it
-- ARGV[6]  ceiling of that range ("" when none): no token handed out exceeds it
-- Returns {1, token} granted | {0, pttl_ms} held by someone else | {-1, wanted} a range must be reserved first
--
-- Tokens are max(last + 1, server time in microseconds): strictly increasing per name,
-- and still increasing after Redis lost the fence key as long as the server clock did
-- not step back. With a database, tokens also stay above every range reserved before.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local max = tonumber(redis.call('HGET', KEYS[2], 'max') or '0')
if ARGV[6] ~= '' then
  local floor, ceiling = tonumber(ARGV[5]), tonumber(ARGV[6])
  if ceiling > max then
    max = ceiling
    if last < floor then last = floor end
  end
end
local token = last + 1
if now > token then token = now end
if ARGV[3] == '1' and token > max then
  return {-1, string.format('%.0f', token)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'n', string.format('%.0f', token), 'max', string.format('%.0f', max))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, string.format('%.0f', token)}
