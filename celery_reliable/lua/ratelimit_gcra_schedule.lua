-- GCRA with a schedule: admit a request now, or give it its own later instant to come back.
-- The meter (KEYS[1]) decides exactly as ratelimit_gcra.lua does and counts only what it
-- admits. A request it refuses is given the first instant at which it would conform if
-- every request scheduled before it came back on time and was admitted: the schedule
-- (KEYS[2]) keeps that hypothetical arrival time. Refused requests so come back one by
-- one, evenly spaced, instead of as a herd refused again; one that comes back late and
-- finds its instant taken is simply scheduled again, and the meter still holds.
-- KEYS[1]  the meter's theoretical arrival time (TAT), integer microseconds, server clock
-- KEYS[2]  the schedule's TAT (same hash tag as KEYS[1])
-- ARGV[1]  emission interval T: microseconds per request at the sustained rate
-- ARGV[2]  burst: requests admitted at once from idle
-- ARGV[3]  cost (requests this call counts for, 1 to burst)
-- Returns {1 admitted | 0 scheduled, microseconds until the scheduled instant (0 when
-- admitted), the server time in microseconds}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local span = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + cost * interval
if now >= new_tat - span then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  return {1, 0, now}
end
local planned = tonumber(redis.call('GET', KEYS[2]) or tat)
if planned < tat then
  planned = tat
end
local new_planned = planned + cost * interval
local due = new_planned - span
redis.call('SET', KEYS[2], string.format('%d', new_planned), 'PX', math.ceil((new_planned - now) / 1000) + 1)
return {0, due - now, now}
