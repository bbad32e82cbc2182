-- create: insert a tensor record with the registry's reference, plus one for
-- ARGV[3] when it is not empty (a socket lease). The caller wrote the record's
-- refcount (1 or 2) among the fields and knows the record: a new one is not
-- sent back.
-- KEYS: meta, refs, index, req, names, pidrefs, podrefs
-- ARGV: use_req ('1'|'0'), req_ttl_s, holder, score (ctime ms), name, field, value, ...
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  return {'dup', redis.call('HGETALL', KEYS[1])}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists', redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'registry', 1, ARGV[3], 1)
  if string.sub(ARGV[3], 1, 4) == 'pid:' then
    redis.call('SADD', KEYS[6], ARGV[5])
  elseif string.sub(ARGV[3], 1, 4) == 'pod:' then
    redis.call('SADD', KEYS[7], ARGV[5])
  end
else
  redis.call('HSET', KEYS[2], 'registry', 1)
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[5], 0, ARGV[5])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[2])
end
return {'created'}
