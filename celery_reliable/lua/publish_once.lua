-- Remember the task id published for a key, or return the one already there.
-- KEYS[1]  publish key (string: task id)
-- ARGV[1]  task id about to be published
-- ARGV[2]  time to live in milliseconds
-- Returns "" when ARGV[1] was stored (go ahead and publish), else the earlier task id.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return ''
end
return redis.call('GET', KEYS[1]) or ''
