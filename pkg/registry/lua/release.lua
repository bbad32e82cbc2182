-- release: drop references of a holder; with mark_deleted it is the seed's
-- delete (the holder is 'registry' and the tensor takes no new references).
-- When refcount reaches 0 the record and its index entry go away and the
-- uid is returned so the agent frees the block.
-- KEYS: meta, refs, index, req, names, pidrefs, podrefs
-- ARGV: use_req, req_ttl_s, holder, count ('all' or a number), now_ms, mark_deleted ('1'|'0'), name
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  return {'dup'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_found'}
end
if ARGV[6] == '1' and redis.call('HGET', KEYS[1], 'state') ~= 'ready' then
  return {'not_found'}
end
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
if have <= 0 then
  return {'not_held'}
end
local c = have
if ARGV[4] ~= 'all' then
  c = math.min(tonumber(ARGV[4]), have)
end
if have - c <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
else
  redis.call('HINCRBY', KEYS[2], ARGV[3], -c)
end
local n = redis.call('HINCRBY', KEYS[1], 'refcount', -c)
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'deleted')
end
redis.call('HSET', KEYS[1], 'mtime', ARGV[5])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[2])
end
if n <= 0 then
  local uid = redis.call('HGET', KEYS[1], 'uid')
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[7])
  redis.call('ZREM', KEYS[5], ARGV[7])
  redis.call('SREM', KEYS[6], ARGV[7])
  redis.call('SREM', KEYS[7], ARGV[7])
  return {'freed', uid}
end
return {'ok', tostring(n), redis.call('HGET', KEYS[1], 'uid')}
