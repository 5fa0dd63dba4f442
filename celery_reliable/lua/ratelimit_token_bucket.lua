-- Take `cost` tokens from a token bucket if it holds them, on the server's clock.
-- KEYS[1]  bucket hash: "tokens" (a float, as of "ts") and "ts" (microseconds, server clock);
--          a missing bucket is full
-- ARGV[1]  capacity (tokens)
-- ARGV[2]  refill rate (tokens per second, a float)
-- ARGV[3]  cost (tokens this request takes, 1 to capacity)
-- Returns one status reply, five integers separated by spaces (one line for the client to
-- read, not an array of five): 1 allowed | 0 denied, whole tokens left, microseconds until
-- the bucket is full, microseconds until `cost` tokens are there (0 when allowed), the
-- server time in microseconds.
-- A denial writes nothing: the stored level and time still describe the bucket.
local function reply(allowed, remaining, reset_us, retry_us, now_us)
  return redis.status_reply(string.format('%d %d %d %d %d', allowed, remaining, reset_us, retry_us, now_us))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = capacity, now
end
-- A server clock that stepped back refills nothing for the step (and the new time is kept).
local elapsed = math.max(0, now - ts)
tokens = math.min(capacity, tokens + elapsed * rate / 1000000)
if tokens < cost then
  local retry = math.max(1, math.ceil((cost - tokens) * 1000000 / rate))
  local reset = math.ceil((capacity - tokens) * 1000000 / rate)
  return reply(0, math.floor(tokens), reset, retry, now)
end
tokens = tokens - cost
local reset = math.ceil((capacity - tokens) * 1000000 / rate)
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
-- Once full, a missing bucket means the same thing: let it go.
redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1)
return reply(1, math.floor(tokens), reset, 0, now)
