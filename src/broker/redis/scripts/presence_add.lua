-- Adds or refreshes a presence entry.
-- KEYS: presence hash, presence zset. ARGV: client, entry, expire_at_ms, ttl_ms.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
