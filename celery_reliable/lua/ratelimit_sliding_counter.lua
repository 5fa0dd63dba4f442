-- Sliding window counter: the previous fixed window's count, weighted by how much of it the
-- sliding window still covers, plus the current window's count (constant memory per key).
-- KEYS[1]  hash: "w" (index of the current fixed window: server time // window),
--          "c" (requests admitted in it), "p" (requests admitted in the window before)
-- ARGV[1]  window in microseconds
-- ARGV[2]  limit (requests per window)
-- ARGV[3]  cost (requests this call counts for, 1 to limit)
-- Returns one status reply, five integers separated by spaces (one line for the client to
-- read, not an array of five): 1 allowed | 0 denied, requests left, microseconds until both
-- counts have expired, microseconds until this request would be admitted (0 when allowed),
-- the server time in microseconds.
-- Never more than `limit` in one fixed window; in a sliding window, exact when requests are
-- spread evenly, at most 2 * limit in the worst case.
local function reply(allowed, remaining, reset_us, retry_us, now_us)
  return redis.status_reply(string.format('%d %d %d %d %d', allowed, remaining, reset_us, retry_us, now_us))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local stored, current, previous = tonumber(state[1]), tonumber(state[2]) or 0, tonumber(state[3]) or 0
if stored == nil or stored < index - 1 then
  current, previous = 0, 0
elseif stored == index - 1 then
  current, previous = 0, current
elseif stored > index then
  index = stored -- the server clock stepped back: keep counting in the newer window
end
local start = index * window
local weight = math.min(1, math.max(0, (start + window - now) / window))
local estimate = previous * weight + current
local reset = 0
if estimate + cost > limit then
  local retry
  if current + cost <= limit then
    -- In this window, once the previous window's weight has dropped enough.
    retry = start + window * (1 - (limit - current - cost) / previous) - now
  else
    -- In the next window, once this window's weight has dropped enough.
    retry = start + window + window * math.max(0, 1 - (limit - cost) / current) - now
  end
  if current > 0 then
    reset = start + 2 * window - now
  elseif previous > 0 then
    reset = start + window - now
  end
  return reply(0, math.max(0, math.floor(limit - estimate)), math.ceil(reset), math.max(1, math.ceil(retry)), now)
end
current = current + cost
reset = start + 2 * window - now
redis.call('HSET', KEYS[1], 'w', string.format('%d', index), 'c', current, 'p', previous)
redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
return reply(1, math.floor(limit - estimate - cost), reset, 0, now)
