-- Publishes this node's info, drops expired ones, returns every live node's.
-- KEYS: nodes hash, nodes zset. ARGV: id, info json, expire_at_ms, now_ms.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, n in ipairs(dead) do redis.call('HDEL', KEYS[1], n) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4]) end
return redis.call('HVALS', KEYS[1])
