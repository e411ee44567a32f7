-- History read (the API and gap repair).
-- KEYS: stream, meta.
-- ARGV: new_epoch, meta_ttl_ms, mode ("last" | "since"), since_offset, since_epoch,
--       limit (-1 = none), history_size.
-- Returns {epoch, top, recovered (1/0), entries}.
-- A stream last written by another master (a failover or restart since, see publish.lua) restarts
-- under a new epoch here too, so a recovering client learns of it before the next publication.
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local meta = redis.call('HMGET', KEYS[2], 'e', 'o', 'r')
local epoch = meta[1]
local top = 0
if epoch and meta[3] and meta[3] ~= replid then
  epoch = false
end
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0, 'r', replid)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
else
  top = tonumber(meta[2] or '0')
end
local limit = tonumber(ARGV[6])
if ARGV[3] == 'last' then
  local n = tonumber(ARGV[7])
  if limit >= 0 and limit < n then n = limit end
  local out = {}
  if n > 0 then
    local rows = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n)
    for i = #rows, 1, -1 do table.insert(out, rows[i]) end
  end
  return {epoch, top, 1, out}
end
local since = tonumber(ARGV[4])
if ARGV[5] ~= epoch or since > top then return {epoch, top, 0, {}} end
if since == top or limit == 0 then return {epoch, top, 1, {}} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {epoch, top, 0, {}} end
local firstoff = tonumber(string.match(first[1][1], '^(%d+)'))
if firstoff > since + 1 then return {epoch, top, 0, {}} end
local rows
if limit > 0 then
  rows = redis.call('XRANGE', KEYS[1], '(' .. since .. '-0', '+', 'COUNT', limit)
else
  rows = redis.call('XRANGE', KEYS[1], '(' .. since .. '-0', '+')
end
return {epoch, top, 1, rows}
