-- Lease a slot of a bulkhead (a cluster-wide concurrency cap) if one is free.
-- KEYS[1]  sorted set: owner token -> lease expiry, integer milliseconds on the server's clock
-- KEYS[2]  the average length of a hold in milliseconds (kept by bulkhead_release.lua;
--          missing until a first release)
-- ARGV[1]  owner token
-- ARGV[2]  size: the most slots leased at once
-- ARGV[3]  lease in milliseconds
-- Expired leases (holders that died) are dropped first. An owner that already holds a
-- slot has its lease extended: an acquire retried after a lost reply takes no second slot.
-- Returns {1 acquired | 0 full, slots in use (this one included when acquired),
-- milliseconds until a slot is likely free (0 when acquired), milliseconds until the
-- earliest lease runs out (0 when acquired), the server time in milliseconds}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, size, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], owner)
local n = redis.call('ZCARD', KEYS[1])
if held or n < size then
  redis.call('ZADD', KEYS[1], string.format('%d', now + lease), owner)
  if redis.call('PTTL', KEYS[1]) < lease then
    redis.call('PEXPIRE', KEYS[1], lease)
  end
  if not held then
    n = n + 1
  end
  return {1, n, 0, 0, now}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local earliest = math.max(1, tonumber(first[2]) - now)
-- A slot frees when a holder finishes, usually well before its lease runs out: with n
-- holders of average hold h, the first one finishes in about h / n.
-- A measured average of 0 (holds shorter than a millisecond) is a measurement too. With
-- none yet, a second at most: waiting for the whole lease would idle the slots.
local hold = redis.call('GET', KEYS[2])
local likely = math.min(earliest, 1000)
if hold then
  likely = math.max(1, math.min(earliest, math.floor(tonumber(hold) / n)))
end
return {0, n, likely, earliest, now}
