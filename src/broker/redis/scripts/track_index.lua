-- The sweeper's index (a hint of when to look at a tracked key): one of the sorted sets
-- key → time (ms, Redis' clock). A score with a half millisecond is a sweeper's claim (lease):
-- any writer replaces it, so the sweeper's later conditional update (track_settle) keeps what
-- was written meanwhile.
-- KEYS: bucket zset. ARGV: key, mode, ms.
--   mode 'join': score = now + ms, always (written before the join itself, so a key never
--                exists without an entry).
--   mode 'lower': score = ms (absolute) where there is no entry, or it is later, or a claim.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == 'join' then
  redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
  return 1
end
local at = tonumber(ARGV[3])
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or at < tonumber(s) or (tonumber(s) % 1) ~= 0 then
  redis.call('ZADD', KEYS[1], string.format('%d', at), ARGV[1])
  return 1
end
return 0
