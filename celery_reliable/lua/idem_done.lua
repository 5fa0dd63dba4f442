-- The cached record of a completed idempotency key, if Redis holds one.
-- KEYS[1]  done key (string: JSON record)
-- Returns the record, or nil (false inside a composite admission script).
return redis.call('GET', KEYS[1])
