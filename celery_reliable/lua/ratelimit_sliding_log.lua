-- Sliding window, exact: admit a request if fewer than `limit` were admitted in the last window.
-- KEYS[1]  sorted set of admitted requests, scored by their server time in microseconds
--          (members "<time>-<n>", unique); entries older than the window are trimmed
-- ARGV[1]  window in microseconds
-- ARGV[2]  limit (requests per window)
-- ARGV[3]  cost (requests this call counts for, 1 to limit)
-- Returns one status reply, five integers separated by spaces (one line for the client to
-- read, not an array of five): 1 allowed | 0 denied, requests left in the window,
-- microseconds until the last admitted request leaves the window, microseconds until this
-- request would be admitted (0 when allowed), the server time in microseconds.
-- A request admitted at t counts in [t, t + window): at most `limit` in any such window.
local function reply(allowed, remaining, reset_us, retry_us, now_us)
  return redis.status_reply(string.format('%d %d %d %d %d', allowed, remaining, reset_us, retry_us, now_us))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count + cost > limit then
  -- Wait for the oldest requests to leave until `cost` fit; entries from a server clock that
  -- stepped back count until they leave too.
  local oldest = redis.call('ZRANGE', KEYS[1], count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local retry = math.max(1, tonumber(oldest[2]) + window - now)
  return reply(0, math.max(0, limit - count), math.max(0, tonumber(newest[2]) + window - now), retry, now)
end
local stamp, n = string.format('%d', now), 0
for _ = 1, cost do
  -- Two calls in the same microsecond must not share a member.
  while redis.call('ZADD', KEYS[1], 'NX', stamp, stamp .. '-' .. n) == 0 do
    n = n + 1
  end
  n = n + 1
end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local reset = math.max(window, tonumber(newest[2]) + window - now)
redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
return reply(1, limit - count - cost, reset, 0, now)
