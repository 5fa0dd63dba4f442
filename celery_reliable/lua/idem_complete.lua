-- Store a completed key's record and drop the claim if we still own it.
-- KEYS[1]  done key
-- KEYS[2]  claim key
-- ARGV[1]  owner token
-- ARGV[2]  record (JSON)
-- ARGV[3]  time to live in milliseconds
-- Returns 1 when the claim was still ours, 0 otherwise (the record is stored either way).
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
