-- restore: write back a record its agent still holds memory for, after Redis
-- lost it (a restart without persistence). A record Redis has is left alone.
-- KEYS: meta, refs, index, names, pidrefs, podrefs
-- ARGV: name, ctime (score), n_holders, holder, count, ..., field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local h, c = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[2], h, c)
  if string.sub(h, 1, 4) == 'pid:' then
    redis.call('SADD', KEYS[5], ARGV[1])
  elseif string.sub(h, 1, 4) == 'pod:' then
    redis.call('SADD', KEYS[6], ARGV[1])
  end
  i = i + 2
end
redis.call('HSET', KEYS[1], unpack(ARGV, i))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
return 1
