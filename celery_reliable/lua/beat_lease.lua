-- Take the beat leader lease when it is free, or extend it when it is ours.
-- KEYS[1]  lease key (value: the leader's owner token)
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
-- Returns {1, lease_ms, token} taken (a new term) | {2, lease_ms, token} extended |
--         {0, pttl_ms, holder} held by another beat for pttl_ms more.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, tonumber(ARGV[2]), ARGV[1]}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {2, tonumber(ARGV[2]), holder}
end
return {0, redis.call('PTTL', KEYS[1]), holder}
