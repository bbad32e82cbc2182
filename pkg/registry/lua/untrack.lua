-- untrack: take names out of a holder kind's set when none of their
-- references is of that kind any more (checked here, atomically, so a
-- reference taken meanwhile keeps its name in).
-- KEYS: the kind's set, then the refs hash of each name
-- ARGV: the kind's holder prefix ('pid:'), then the names
local n = 0
for i = 2, #KEYS do
  local keep = false
  for _, h in ipairs(redis.call('HKEYS', KEYS[i])) do
    if string.sub(h, 1, string.len(ARGV[1])) == ARGV[1] then
      keep = true
      break
    end
  end
  if not keep then
    n = n + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return n
