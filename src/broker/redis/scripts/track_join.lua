-- Membership with expiry (webhooks): `member` holds the key until now + ttl. "Now" is Redis'
-- clock (`TIME`), the same for every node.
-- KEYS: the key's state hash (field member → expiry ms; field `~v` → vacating deadline ms).
-- ARGV: member, ttl_ms, keep_ms (how long an abandoned hash survives past its last expiry).
-- Returns 1 when the key went from empty to held (exactly one caller sees it), else 0; a join
-- while vacating cancels the vacating and is not a transition.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local created = redis.call('EXISTS', KEYS[1]) == 0
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])))
redis.call('HDEL', KEYS[1], '~v')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]))
if created then
  return 1
end
return 0
