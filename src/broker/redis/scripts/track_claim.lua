-- The sweeper claims due keys of one index bucket by moving them a lease into the future,
-- marked with a half millisecond (so writers replace it; see track_index). Claims keep two
-- sweepers from looking at the same keys at once; correctness rests on track_sweep alone.
-- KEYS: bucket zset. ARGV: lease_ms, max.
-- Returns {lease score, key, key, ...} ({} when nothing is due).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[2]))
if #keys == 0 then
  return {}
end
local lease = string.format('%d.5', now + tonumber(ARGV[1]))
local out = {lease}
for _, k in ipairs(keys) do
  redis.call('ZADD', KEYS[1], lease, k)
  table.insert(out, k)
end
return out
