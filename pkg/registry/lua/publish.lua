-- publish: record the IPC event a writer recorded after its last write, so
-- readers can wait on it. Only ready tensors take one.
-- KEYS: meta
-- ARGV: event (base64), now_ms
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then
  return 0
end
redis.call('HSET', KEYS[1], 'event', ARGV[1], 'mtime', ARGV[2])
return 1
