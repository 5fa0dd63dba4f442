-- GCRA booking: give a request the first instant at which it conforms, and take it now.
-- A request that conforms now runs now; one that arrives too early is booked for later
-- (the meter's theoretical arrival time moves on at once), so requests that must wait
-- hold distinct, evenly spaced instants: parked tasks come back one by one, each to an
-- instant that is its own, instead of as a herd refused again.
-- KEYS[1]  the meter's theoretical arrival time (TAT), integer microseconds, server clock
-- ARGV[1]  emission interval T: microseconds per request at the sustained rate
-- ARGV[2]  burst: requests admitted at once from idle
-- ARGV[3]  cost (requests this call counts for, 1 to burst)
-- ARGV[4]  optional: the instant, in microseconds, of a booking the caller already holds
-- ARGV[5]  optional: how late, in microseconds, that booking may still be used
-- Returns {microseconds until the booked instant (0: now), the server time in microseconds},
-- or {0, the server time, 1} when the booking held is still good (nothing is booked).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[4] and now - tonumber(ARGV[4]) <= tonumber(ARGV[5]) then
  return {0, now, 1}
end
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + cost * interval
local wait = new_tat - burst * interval - now
if wait < 0 then
  wait = 0
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {wait, now}
