-- Where a channel's stream stands (the sequencer's baseline and position checks), read-only.
-- KEYS: meta.
-- Returns {epoch, top}; epoch "" when there is no stream, or when it was last written by another
-- master (see publish.lua: it restarts under a new epoch at its next publication or read).
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local m = redis.call('HMGET', KEYS[1], 'e', 'o', 'r')
if not m[1] or (m[3] and m[3] ~= replid) then
  return {'', 0}
end
return {m[1], tonumber(m[2] or '0')}
