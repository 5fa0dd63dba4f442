-- GCRA (the leaky bucket as a meter): admit a request if it does not arrive too early.
-- KEYS[1]  the theoretical arrival time (TAT), integer microseconds on the server's clock;
--          missing when the meter is idle
-- ARGV[1]  emission interval T: microseconds per request at the sustained rate (an integer,
--          rounded up so the rate is never exceeded)
-- ARGV[2]  burst: requests admitted at once from idle (the tolerance is (burst - 1) * T)
-- ARGV[3]  cost (requests this call counts for, 1 to burst)
-- Returns one status reply, five integers separated by spaces (one line for the client to
-- read, not an array of five): 1 allowed | 0 denied, requests that could still be admitted
-- now, microseconds until the meter is idle again, microseconds until this request would
-- be admitted (0 when allowed), the server time in microseconds.
local function reply(allowed, remaining, reset_us, retry_us, now_us)
  return redis.status_reply(string.format('%d %d %d %d %d', allowed, remaining, reset_us, retry_us, now_us))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local span = burst * interval
local new_tat = tat + cost * interval
local allow_at = new_tat - span
if now < allow_at then
  local left = math.max(0, math.floor((now + span - tat) / interval))
  return reply(0, left, tat - now, allow_at - now, now)
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return reply(1, math.floor((now - allow_at) / interval), new_tat - now, 0, now)
