-- Acquire a lock and hand out its fencing token, in one step.
-- KEYS[1]  lock key     (string: owner token, with the lease as its expiry)
-- KEYS[2]  fence key    (string: the last token handed out)
-- KEYS[3]  ceiling key  (string: highest token the database reserved; used when ARGV[3] is "1")
-- KEYS[4]  waiters flag (string: set while someone waits, so a release knows to wake them)
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  "1" when tokens must stay within a range reserved in the database, else "0"
-- ARGV[4]  how long the fence keys outlive their last use, in milliseconds
-- ARGV[5]  floor of a newly reserved range ("" when none): every token handed out is above it
-- ARGV[6]  ceiling of that range ("" when none): no token handed out exceeds it
-- ARGV[7]  "1" if the caller will wait for a release when the lock is busy
-- Returns token (> 0): granted | -(pttl + 1) (<= 0): held by someone else, for pttl ms
--         | {wanted}: a range covering token `wanted` must be reserved in the database first
-- An owner that already holds the lock (its call re-sent after a lost reply) gets its hold
-- back, lease renewed, with the token it was handed.
--
-- Tokens are max(last + 1, server time in microseconds): strictly increasing per name,
-- and still increasing after Redis lost the fence key as long as the server clock did
-- not step back. With a database, tokens also stay above every range reserved before.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) == ARGV[1] then
    local mine = redis.call('GET', KEYS[2])
    if mine then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return tonumber(mine)
    end
  end
  local pttl = redis.call('PTTL', KEYS[1])
  if ARGV[7] == '1' then
    redis.call('SET', KEYS[4], '1', 'PX', math.max(pttl, 0) + 1000)
  end
  return -(pttl + 1)
end
local t = redis.call('TIME')
local token = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if last >= token then token = last + 1 end
if ARGV[3] == '1' then
  local max = tonumber(redis.call('GET', KEYS[3]) or '0')
  if ARGV[6] ~= '' and tonumber(ARGV[6]) > max then
    max = tonumber(ARGV[6])
    if token <= tonumber(ARGV[5]) then token = tonumber(ARGV[5]) + 1 end
  end
  if token > max then
    redis.call('DEL', KEYS[1])
    return {string.format('%.0f', token)}
  end
  redis.call('SET', KEYS[3], string.format('%.0f', max), 'PX', ARGV[4])
end
redis.call('SET', KEYS[2], string.format('%.0f', token), 'PX', ARGV[4])
return token
