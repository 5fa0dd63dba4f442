-- Release a lock only if its value is our owner token, and wake one waiter.
-- KEYS[1]  lock key
-- KEYS[2]  wake list (one element pushed per release; blocked acquirers BLPOP it)
-- KEYS[3]  optional parked flag (set while tasks parked in the deferred set wait for this lock)
-- ARGV[1]  owner token
-- ARGV[2]  how long an unclaimed wake-up stays, in milliseconds
-- Returns 0 if the lock had expired or belongs to someone else, 1 if released,
-- 2 if released and parked tasks wait for it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  return 2
end
return 1
