-- Claim an idempotency key for one execution, or report why not.
-- KEYS[1]  done key   (string: JSON record of a completed key)
-- KEYS[2]  claim key  (string: owner token, with a lease)
-- ARGV[1]  owner token of this execution
-- ARGV[2]  lease in milliseconds
-- Returns {"done", record} | {"claimed", ""} | {"busy", pttl_ms, holder}
local done = redis.call('GET', KEYS[1])
if done then
  return {'done', done}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed', ''}
end
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {'claimed', ''}
end
return {'busy', tostring(redis.call('PTTL', KEYS[2])), holder or ''}
