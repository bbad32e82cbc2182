-- adopt: a new agent instance takes over a record of its predecessor whose
-- memory it now holds (the record keeps its uid, refcount and holders).
-- KEYS: meta
-- ARGV: old agent instance, new agent instance
if redis.call('HGET', KEYS[1], 'agent') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'agent', ARGV[2])
return 1
