-- Cancels a scheduled publication that is still waiting.
-- KEYS: zset, hash. ARGV: id. Returns 1 when it was waiting (now cancelled), else 0.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
