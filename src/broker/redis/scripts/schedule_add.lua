-- Keeps a scheduled publication until it is due.
-- KEYS: zset, hash, idempotency key. ARGV: id, at_ms, payload, has_idem, idem_ttl_s.
-- Returns the id (the earlier one when the idempotency key was seen).
if ARGV[4] == '1' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return prev end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5]) end
return ARGV[1]
