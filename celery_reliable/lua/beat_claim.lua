-- Claim one tick of one beat entry: only the lease holder, only a tick newer than the last.
-- KEYS[1]  lease key (value: the leader's owner token)
-- KEYS[2]  hash: entry name -> last claimed tick, milliseconds since the epoch
-- ARGV[1]  owner token
-- ARGV[2]  entry name
-- ARGV[3]  tick: the instant the entry is due, milliseconds since the epoch
-- Returns {1, tick} claimed: send it | {0, last} refused: tick <= last, already sent |
--         {-1, holder or false} refused: the caller does not hold the lease.
--
-- One script, so no other beat can take the lease or claim the tick between the check
-- and the write: a leader paused past its lease cannot send, and a new leader cannot
-- send again a tick the old one sent. Ticks are integers below 2^53, exact in Lua.
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  return {-1, holder}
end
local last = redis.call('HGET', KEYS[2], ARGV[2])
if last and tonumber(last) >= tonumber(ARGV[3]) then
  return {0, tonumber(last)}
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return {1, tonumber(ARGV[3])}
