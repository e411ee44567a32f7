-- Membership with expiry: extends `member`'s hold to now + ttl, only where it still holds the key.
-- KEYS: the key's state hash. ARGV: member, ttl_ms, keep_ms.
-- Returns 1 when refreshed, 0 when the member holds the key no longer (it was swept: the node
-- joins again).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]))
return 1
