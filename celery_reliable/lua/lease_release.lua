-- Delete a lease only if its value is our owner token.
-- KEYS[1]  lease key
-- ARGV[1]  owner token
-- Returns 1 if deleted, 0 if the lease was gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
