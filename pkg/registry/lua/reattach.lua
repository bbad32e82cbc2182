-- reattach: a client's connection to a previous agent instance held a
-- reference (one, as every connection holds at most one in Redis); its new
-- connection takes it over, so the refcount stays what it was.
-- KEYS: meta, refs
-- ARGV: old holder, new holder, now_ms
-- Returns {'moved', record}, {'not_held'} or {'not_found'}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_found'}
end
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if have <= 0 then
  return {'not_held'}
end
redis.call('HDEL', KEYS[2], ARGV[1])
local drop = have
if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') <= 0 then
  redis.call('HSET', KEYS[2], ARGV[2], 1)
  drop = have - 1
end
if drop > 0 then
  redis.call('HINCRBY', KEYS[1], 'refcount', -drop)
end
redis.call('HSET', KEYS[1], 'mtime', ARGV[3])
return {'moved', redis.call('HGETALL', KEYS[1])}
