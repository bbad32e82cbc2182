-- acquire: take one reference for a holder on a ready tensor of this agent.
-- KEYS: meta, refs, req
-- ARGV: use_req, req_ttl_s, holder, now_ms, agent
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'dup', redis.call('HGETALL', KEYS[1])}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_found'}
end
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then
  return {'deleted'}
end
if redis.call('HGET', KEYS[1], 'agent') ~= ARGV[5] then
  return {'stale'}
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('HINCRBY', KEYS[1], 'refcount', 1)
redis.call('HSET', KEYS[1], 'mtime', ARGV[4])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
end
return {'ok', redis.call('HGETALL', KEYS[1])}
