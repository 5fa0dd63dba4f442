-- Record calls, withdraw retries, or read a retry budget, on the server's clock.
-- KEYS[1]  budget hash: field "c:<bucket>" = calls, "r:<bucket>" = retries, per time bucket
-- ARGV[1]  bucket length in ms
-- ARGV[2]  buckets in the window (older buckets have expired and are deleted)
-- ARGV[3]  operation: "call" (deposit), "spend" (withdraw if the balance holds it) or "state"
-- ARGV[4]  calls to record, or retries to withdraw (ignored by "state")
-- ARGV[5]  micro-tokens deposited per call (ratio x 1e6)
-- ARGV[6]  reserve in micro-tokens (min_per_second x window x 1e6)
-- Returns {1 done | 0 refused (spend only), balance in micro-tokens after, calls in the
-- window, retries in the window}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket_ms = tonumber(ARGV[1])
local current = math.floor(now / bucket_ms)
local oldest = current - tonumber(ARGV[2]) + 1
local calls, retries, stale = 0, 0, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local kind, bucket = string.match(fields[i], '^(%a):(%d+)$')
  if not bucket or tonumber(bucket) < oldest then
    stale[#stale + 1] = fields[i]
  elseif kind == 'c' then
    calls = calls + tonumber(fields[i + 1])
  else
    retries = retries + tonumber(fields[i + 1])
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
end
local op, n = ARGV[3], tonumber(ARGV[4])
local balance = tonumber(ARGV[6]) + tonumber(ARGV[5]) * calls - 1000000 * retries
if op == 'state' then
  return {1, balance, calls, retries}
end
if op == 'spend' then
  if balance < 1000000 * n then
    return {0, balance, calls, retries}
  end
  retries = retries + n
  balance = balance - 1000000 * n
  redis.call('HINCRBY', KEYS[1], string.format('r:%d', current), n)
else
  calls = calls + n
  balance = balance + tonumber(ARGV[5]) * n
  redis.call('HINCRBY', KEYS[1], string.format('c:%d', current), n)
end
redis.call('PEXPIRE', KEYS[1], bucket_ms * (tonumber(ARGV[2]) + 1))
return {1, balance, calls, retries}
