-- Removes a presence entry.
-- KEYS: presence hash, presence zset. ARGV: client.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
