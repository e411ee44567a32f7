-- Membership with expiry: is the key's transition to empty final? Expired members (a crashed
-- node's) are dropped on the way.
-- KEYS: the key's state hash. ARGV: none.
-- Returns {1, 0} when it is: the key is deleted here, so exactly one sweeper reports it;
-- {0, next} when not yet (next: ms, Redis' clock, to look again); {-1, 0} when there is no key.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, 0}
end
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
  return {0, latest}
end
if vacating and vacating > now then
  return {0, vacating}
end
redis.call('DEL', KEYS[1])
return {1, 0}
