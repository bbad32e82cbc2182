-- acquire: take one reference for a holder on a ready tensor of this agent.
-- KEYS: meta, refs, req, pidrefs, podrefs
-- ARGV: use_req, req_ttl_s, holder, now_ms, agent, brief ('1': answer only
-- what changes after create, {'brief', uid, refcount, event}; the owning
-- agent knows the rest), name
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'dup', redis.call('HGETALL', KEYS[1])}
end
local f = redis.call('HMGET', KEYS[1], 'state', 'agent', 'uid', 'event')
if not f[1] then
  return {'not_found'}
end
if f[1] == 'orphaned' then
  return {'orphaned'}
end
if f[1] ~= 'ready' then
  return {'deleted'}
end
if f[2] ~= ARGV[5] then
  return {'stale'}
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
-- Names with references of processes or pods: what GC and the pod sweep look at.
if string.sub(ARGV[3], 1, 4) == 'pid:' then
  redis.call('SADD', KEYS[4], ARGV[7])
elseif string.sub(ARGV[3], 1, 4) == 'pod:' then
  redis.call('SADD', KEYS[5], ARGV[7])
end
local n = redis.call('HINCRBY', KEYS[1], 'refcount', 1)
redis.call('HSET', KEYS[1], 'mtime', ARGV[4])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
end
if ARGV[6] == '1' then
  return {'brief', f[3], n, f[4] or ''}
end
return {'ok', redis.call('HGETALL', KEYS[1])}
