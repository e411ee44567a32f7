-- After a sweep: each claimed key whose entry still holds this sweeper's claim is removed (the
-- key is gone) or moved to its next time. An entry someone wrote meanwhile is kept as it is.
-- KEYS: bucket zset. ARGV: lease score, then pairs key, next (0 = remove).
local lease = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == lease then
    if ARGV[i + 1] == '0' then
      redis.call('ZREM', KEYS[1], ARGV[i])
    else
      redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    end
  end
end
return 1
