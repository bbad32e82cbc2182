-- orphan: a record of a predecessor whose memory lives on only in the
-- processes that had it open (legacy CUDA IPC). It takes no new references,
-- the registry's reference goes, and the record goes with its last holder.
-- KEYS: meta, refs, index, names, pidrefs, podrefs
-- ARGV: old agent instance, new agent instance, now_ms, name
-- Returns 1 (orphaned), 2 (removed: nobody held it), 0 (not the old instance's).
if redis.call('HGET', KEYS[1], 'agent') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'agent', ARGV[2], 'state', 'orphaned', 'mtime', ARGV[3])
local r = tonumber(redis.call('HGET', KEYS[2], 'registry') or '0')
local n
if r > 0 then
  redis.call('HDEL', KEYS[2], 'registry')
  n = redis.call('HINCRBY', KEYS[1], 'refcount', -r)
else
  n = tonumber(redis.call('HGET', KEYS[1], 'refcount') or '0')
end
if n <= 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('SREM', KEYS[5], ARGV[4])
  redis.call('SREM', KEYS[6], ARGV[4])
  return 2
end
return 1
