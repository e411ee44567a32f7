-- Publish: idempotency check, epoch (created when missing, or changed after a failover),
-- next offset, history append and delivery, atomically (every key carries the channel's hash tag).
-- KEYS: stream, meta, shard channel, idempotency key (the caller's key, or the request's own id
--       so that a retried attempt of the same request is not published twice).
-- ARGV: data, info, history_size, history_ttl_ms, meta_ttl_ms, new_epoch, published_at_us,
--       has_idempotency_key, idem_ttl_s.
-- Returns {"ok"|"dup", offset, epoch}.
--
-- Meta field `r` is the replication id of the master that last wrote the stream. A different one
-- means this master took over (a promoted replica) or restarted since: acknowledged writes may be
-- lost and offsets would be handed out again, so the stream restarts under a new epoch.
if ARGV[8] == '1' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sp = string.find(prev, ' ')
    return {'dup', tonumber(string.sub(prev, 1, sp - 1)), string.sub(prev, sp + 1)}
  end
end
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local meta = redis.call('HMGET', KEYS[2], 'e', 'r')
local epoch = meta[1]
if epoch and meta[2] and meta[2] ~= replid then
  epoch = false
end
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0, 'r', replid)
  redis.call('DEL', KEYS[1])
elseif not meta[2] then
  redis.call('HSET', KEYS[2], 'r', replid)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', size, offset .. '-0', 'd', ARGV[1], 'i', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('SPUBLISH', KEYS[3], 'p ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[7] .. ' ' ..
  string.len(ARGV[2]) .. '\n' .. ARGV[2] .. ARGV[1])
if ARGV[8] == '1' then
  redis.call('SET', KEYS[4], offset .. ' ' .. epoch, 'EX', ARGV[9])
end
return {'ok', offset, epoch}
