-- Extend a lease only if its value is our owner token.
-- KEYS[1]  lease key
-- ARGV[1]  owner token
-- ARGV[2]  new lease in milliseconds
-- Returns 1 if extended, 0 if the lease was gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
