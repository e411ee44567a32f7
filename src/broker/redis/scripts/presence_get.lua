-- Drops expired presence entries, returns the rest.
-- KEYS: presence hash, presence zset. ARGV: now_ms.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, c in ipairs(dead) do redis.call('HDEL', KEYS[1], c) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
return redis.call('HVALS', KEYS[1])
