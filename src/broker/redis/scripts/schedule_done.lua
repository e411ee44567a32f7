-- Forgets a delivered (or undecodable) scheduled publication.
-- KEYS: zset, hash. ARGV: id.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
