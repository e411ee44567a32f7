-- Membership with expiry: `member` let go of the key. With no live member left the key is
-- vacating until now + delay (not yet a transition: track_sweep makes it final).
-- KEYS: the key's state hash. ARGV: member, delay_ms, keep_ms.
-- Returns when the key should next be looked at (ms, Redis' clock): the vacating deadline, or
-- the latest expiry of the members left; -1 when the key doesn't exist.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
redis.call('HDEL', KEYS[1], ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local latest = -1
local vacating = nil
for i = 1, #all, 2 do
  local v = tonumber(all[i + 1])
  if all[i] == '~v' then
    vacating = v
  elseif v > now then
    if v > latest then latest = v end
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if latest >= 0 then
  return latest
end
if vacating then
  return vacating
end
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], '~v', string.format('%d', deadline))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]))
return deadline
