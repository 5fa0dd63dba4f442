-- Release a lock only if its value is our owner token; wake waiters if any announced themselves.
-- KEYS[1]  lock key
-- KEYS[2]  wake list (blocked acquirers BLPOP it; one element pushed per release)
-- KEYS[3]  optional waiters flag (set by acquirers that wait and by tasks parked for the lock)
-- ARGV[1]  owner token
-- ARGV[2]  how long an unclaimed wake-up stays, in milliseconds
-- Returns 0 if the lock had expired or belongs to someone else, 1 if released,
-- 2 if released and someone waits for it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 2
end
return 1
