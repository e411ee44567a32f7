-- Claims due entries by pushing their score a lease into the future. "Now" is Redis' clock
-- (`TIME`), the same for every node whatever their own clocks say.
-- KEYS: zset, hash. ARGV: unused (was the node's clock), lease_ms, max.
-- Returns {id, payload, id, payload, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, ARGV[3])
local out = {}
local until_ms = now + tonumber(ARGV[2])
for _, id in ipairs(ids) do
  local p = redis.call('HGET', KEYS[2], id)
  if p then
    redis.call('ZADD', KEYS[1], string.format('%d', until_ms), id)
    table.insert(out, id)
    table.insert(out, p)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
