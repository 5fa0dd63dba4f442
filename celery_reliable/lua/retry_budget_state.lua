-- Read a retry budget's balance, on the server's clock (expired buckets are deleted).
-- KEYS[1]  budget hash: field "c:<bucket>" = calls, "r:<bucket>" = retries, per time bucket
-- ARGV[1]  bucket length in ms
-- ARGV[2]  buckets in the window
-- ARGV[3]  micro-tokens deposited per call (ratio x 1e6)
-- ARGV[4]  reserve in micro-tokens (min_per_second x window x 1e6)
-- Returns {balance in micro-tokens, calls in the window, retries in the window}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket_ms = tonumber(ARGV[1])
local oldest = math.floor(now / bucket_ms) - tonumber(ARGV[2]) + 1
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
return {tonumber(ARGV[4]) + tonumber(ARGV[3]) * calls - 1000000 * retries, calls, retries}
