-- remove: drop the record of a tensor whose memory is gone (its agent
-- instance died). Only removes it while it still belongs to that instance.
-- KEYS: meta, refs, index, names, pidrefs, podrefs
-- ARGV: name, agent instance ('' also removes an index entry with no record)
local owner = redis.call('HGET', KEYS[1], 'agent')
if owner == false then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('SREM', KEYS[5], ARGV[1])
  redis.call('SREM', KEYS[6], ARGV[1])
  return redis.call('ZREM', KEYS[3], ARGV[1])
end
if owner ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
return 1
