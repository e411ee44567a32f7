-- Publish: idempotency check, epoch (created when missing), next offset, history append and
-- delivery, atomically (every key carries the channel's hash tag).
-- KEYS: stream, meta, shard channel, idempotency key.
-- ARGV: data, info, history_size, history_ttl_ms, meta_ttl_ms, new_epoch, published_at_us,
--       has_idempotency_key, idem_ttl_s.
-- Returns {"ok"|"dup", offset, epoch}.
if ARGV[8] == '1' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sp = string.find(prev, ' ')
    return {'dup', tonumber(string.sub(prev, 1, sp - 1)), string.sub(prev, sp + 1)}
  end
end
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1])
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
