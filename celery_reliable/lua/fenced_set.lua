-- Store a value under a fencing token, refusing a token older than the one stored.
-- KEYS[1]  hash: field "value" = the value, field "token" = the newest token accepted
-- ARGV[1]  the value
-- ARGV[2]  the writer's fencing token (decimal digits, no sign, no leading zeros)
-- Returns {1, token} stored | {0, current} refused: the hash holds a newer token.
--
-- Tokens compare as decimal strings (length first, then digits), so they stay exact
-- beyond 2^53, where Lua numbers (doubles) would round.
local current = redis.call('HGET', KEYS[1], 'token')
local token = ARGV[2]
if current and (#current > #token or (#current == #token and current > token)) then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'token', token)
return {1, token}
